//! `pow serve` end to end (issue #9): a real browser uploads through the page, aria2 downloads
//! from the server's seed, `pow source load` uses the server as its HTTP torrent store, bad
//! uploads get their status codes and leave nothing behind, and a server killed with -9 seeds
//! everything again when restarted.

mod common;

use base64::Engine as _;
use common::serve::{form, Server};
use common::{
    free_port, http_client_builder, http_get, make_zip, md5_hex, pow, pow_bin, TempDir, Tmpfs,
};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One HTTP/1.1 request over a raw socket (so an early 413 is read even though the body was
/// not); returns the status and the response body.
fn raw_request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).unwrap();
    // The server may answer (413) and close before taking the whole body.
    let _ = stream.write_all(body);
    read_response(&mut stream)
}

/// Reads an HTTP/1.1 response to its end (the request said `Connection: close`): its status
/// and body.
fn read_response(stream: &mut TcpStream) -> (u16, String) {
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let text = String::from_utf8_lossy(&response).into_owned();
    let status: u16 = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status in {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    (status, body)
}

/// Sends `head` (a request line and headers, without the blank line) and `part` of a body
/// that would be longer, and keeps the connection open: the answer must come before the body
/// ends. Returns the status and the response body (panics if none comes in 20 s).
fn answer_before_body_ends(addr: &str, head: &str, part: &[u8]) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    stream
        .write_all(format!("{head}Host: {addr}\r\nConnection: close\r\n\r\n").as_bytes())
        .unwrap();
    let _ = stream.write_all(part);
    read_response(&mut stream)
}

fn upload(server: &Server, file_name: &str, bytes: &[u8]) -> (u16, serde_json::Value) {
    upload_described(server, file_name, bytes, None)
}

fn upload_described(
    server: &Server,
    file_name: &str,
    bytes: &[u8],
    description: Option<&str>,
) -> (u16, serde_json::Value) {
    let (content_type, body) = form(file_name, bytes, description);
    let (status, reply) = raw_request(
        &server.addr,
        "POST",
        "/upload",
        &[
            ("Content-Type", &content_type),
            ("Accept", "application/json"),
        ],
        &body,
    );
    let json = serde_json::from_str(&reply).unwrap_or_else(|e| panic!("{e}: {reply:?}"));
    (status, json)
}

/// Uploads a new `mib` MiB zip (`seed` makes its bytes) as `name` and waits until it seeds;
/// returns its dataset entry and info-hash.
fn upload_seeding(
    server: &Server,
    work: &Path,
    name: &str,
    mib: u64,
    seed: u64,
) -> (serde_json::Value, [u8; 20]) {
    let zip = work.join(name);
    make_zip(&zip, mib, seed);
    let (status, reply) = upload(server, name, &std::fs::read(&zip).unwrap());
    assert_eq!(status, 201, "{reply}");
    let dataset = server.wait_seeding(reply["md5"].as_str().unwrap());
    let info_hash: [u8; 20] = hex::decode(dataset["info_hash"].as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap();
    (dataset, info_hash)
}

/// Fetches the dataset's torrent from the server's store into `path`.
fn save_torrent(server: &Server, dataset: &serde_json::Value, path: &Path) {
    let url = format!("{}{}", server.url, dataset["torrent_url"].as_str().unwrap());
    let bytes = http_get(url).unwrap().bytes().unwrap();
    std::fs::write(path, &bytes).unwrap();
}

/// aria2 downloads the dataset's torrent (fetched from the server) from the server's seed.
fn aria2_download(
    server: &Server,
    dataset: &serde_json::Value,
    into: &Path,
    extra: &[&str],
) -> PathBuf {
    let torrent = into.join("dataset.torrent");
    save_torrent(server, dataset, &torrent);
    let out_dir = into.join("aria2");
    let started = Instant::now();
    let mut aria2 = Command::new("aria2c")
        .args(["--seed-time=0", "--enable-dht=false", "--enable-dht6=false"])
        .args([
            "--bt-enable-lpd=false",
            "--enable-peer-exchange=false",
            "--bt-stop-timeout=90",
        ])
        .args([
            "--console-log-level=warn",
            "--summary-interval=0",
            "--file-allocation=none",
        ])
        .arg(format!("--listen-port={}", free_port()))
        .args(extra)
        .arg("-d")
        .arg(&out_dir)
        .arg(&torrent)
        .stdout(Stdio::null())
        .spawn()
        .expect("aria2c (installed by scripts/install-deps --tests)");
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = aria2.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = aria2.kill();
            panic!("aria2 did not finish in 120 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "aria2c: {status}");
    let path = out_dir.join(dataset["name"].as_str().unwrap());
    println!(
        "aria2 downloaded {} ({} bytes) from the server's seed in {:.2} s",
        dataset["name"],
        std::fs::metadata(&path).unwrap().len(),
        started.elapsed().as_secs_f64()
    );
    path
}

/// chromedriver on a free port, driving Debian's headless Chromium over WebDriver's HTTP API.
struct Browser {
    driver: Child,
    base: String,
    http: reqwest::blocking::Client,
    _profile: TempDir,
}

const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

impl Browser {
    fn start() -> Browser {
        let port = free_port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect(
                "chromedriver (Debian chromium-driver, installed by scripts/install-deps --tests)",
            );
        let base = format!("http://127.0.0.1:{port}");
        let http = http_client_builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while http.get(format!("{base}/status")).send().is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        let profile = TempDir::new("chromium-profile");
        let capabilities = serde_json::json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--disable-background-networking", "--disable-component-update",
                    "--disable-sync", "--no-first-run", "--window-size=1280,1000",
                    format!("--user-data-dir={}", profile.path().display()),
                ]
            }
        }}});
        let reply: serde_json::Value = http
            .post(format!("{base}/session"))
            .header("Content-Type", "application/json")
            .body(capabilities.to_string())
            .send()
            .unwrap()
            .text()
            .map(|t| serde_json::from_str(&t).unwrap())
            .unwrap();
        let session = reply["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {reply}"))
            .to_string();
        Browser {
            driver,
            base: format!("{base}/session/{session}"),
            http,
            _profile: profile,
        }
    }

    fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: serde_json::Value,
    ) -> serde_json::Value {
        let request = self.http.request(method, format!("{}{path}", self.base));
        let request = if body.is_null() {
            request
        } else {
            request
                .header("Content-Type", "application/json")
                .body(body.to_string())
        };
        let text = request.send().unwrap().text().unwrap();
        let reply: serde_json::Value = serde_json::from_str(&text).unwrap();
        reply["value"].clone()
    }

    fn go(&self, url: &str) {
        self.call(
            reqwest::Method::POST,
            "/url",
            serde_json::json!({ "url": url }),
        );
    }

    /// The element matching `css`, if there is one now.
    fn find(&self, css: &str) -> Option<String> {
        let value = self.call(
            reqwest::Method::POST,
            "/element",
            serde_json::json!({"using": "css selector", "value": css}),
        );
        value[ELEMENT_KEY].as_str().map(str::to_string)
    }

    fn wait_for(&self, css: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            if let Some(element) = self.find(css) {
                return element;
            }
            assert!(
                Instant::now() < deadline,
                "no {css} on the page after {within:?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn type_into(&self, element: &str, text: &str) {
        self.call(
            reqwest::Method::POST,
            &format!("/element/{element}/value"),
            serde_json::json!({ "text": text }),
        );
    }

    fn click(&self, element: &str) {
        self.call(
            reqwest::Method::POST,
            &format!("/element/{element}/click"),
            serde_json::json!({}),
        );
    }

    fn text(&self, element: &str) -> String {
        self.call(
            reqwest::Method::GET,
            &format!("/element/{element}/text"),
            serde_json::Value::Null,
        )
        .as_str()
        .unwrap_or_default()
        .to_string()
    }

    fn screenshot(&self, path: &Path) {
        let png = self.call(reqwest::Method::GET, "/screenshot", serde_json::Value::Null);
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().unwrap())
            .unwrap();
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.http.delete(&self.base).send();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// Where test artifacts (the screenshot) go: next to the tested binary, in the build dir.
fn artifacts_dir() -> PathBuf {
    pow_bin().parent().unwrap().join("test-artifacts")
}

#[test]
fn browser_upload_then_aria2_and_pow_load_fetch_it_from_the_server() {
    let work = TempDir::new("serve-browser");
    let zip = work.path().join("Stained nuclei (2019).zip");
    make_zip(&zip, 6, 11);
    let md5 = md5_hex(&zip);
    let server = Server::start(&work.path().join("server"), free_port(), &[]);

    // 1. A real browser: open the page, choose the zip, describe it, upload, see it listed.
    let browser = Browser::start();
    browser.go(&server.url);
    let file_input = browser.wait_for("#file", Duration::from_secs(20));
    browser.type_into(&file_input, zip.to_str().unwrap());
    let description = browser.find("#description").unwrap();
    browser.type_into(&description, "Nuclei of a stained worm, one CSV per slice");
    let started = Instant::now();
    browser.click(&browser.find("#submit").unwrap());
    let row = browser.wait_for(&format!("tr[data-md5=\"{md5}\"]"), Duration::from_secs(60));
    let row_text = browser.text(&row);
    println!(
        "browser: uploaded and listed in {:.2} s: {row_text:?}",
        started.elapsed().as_secs_f64()
    );
    assert!(row_text.contains("Stained_nuclei__2019_.zip"), "{row_text}");
    assert!(row_text.contains(&md5), "{row_text}");
    assert!(row_text.contains("Nuclei of a stained worm"), "{row_text}");
    let notice = browser.text(&browser.find(".notice").expect("a notice after publishing"));
    assert!(notice.contains("Published"), "{notice}");
    let screenshot = artifacts_dir().join("serve-upload.png");
    browser.screenshot(&screenshot);
    println!("screenshot: {}", screenshot.display());
    drop(browser);

    let dataset = server.wait_seeding(&md5);
    assert_eq!(dataset["size"], std::fs::metadata(&zip).unwrap().len());
    assert_eq!(dataset["torrent_file_name"], format!("{md5}.torrent"));
    assert!(dataset["magnet"].as_str().unwrap().starts_with(&format!(
        "magnet:?xt=urn:btih:{}",
        dataset["info_hash"].as_str().unwrap()
    )));

    // 2a. aria2, a real client, downloads it from the server's seed.
    let downloaded = aria2_download(&server, &dataset, work.path(), &[]);
    assert_eq!(
        std::fs::read(&downloaded).unwrap(),
        std::fs::read(&zip).unwrap()
    );

    // 2b. `pow source load` with the server as the HTTP torrent store.
    let project = work.path().join("project");
    assert!(pow()
        .arg("--pow-dir")
        .arg(&project)
        .arg("init")
        .status()
        .unwrap()
        .success());
    let defs = work.path().join("nuclei.toml");
    std::fs::write(
        &defs,
        format!(
            "[[source]]\ntype = \"ConnectomeCSVDataSource\"\nkey = \"nuclei\"\n\
             torrent_file_name = \"{md5}.torrent\"\nmd5 = \"{md5}\"\n"
        ),
    )
    .unwrap();
    assert!(pow()
        .arg("--pow-dir")
        .arg(&project)
        .arg("save")
        .arg(&defs)
        .status()
        .unwrap()
        .success());
    let out = pow()
        .arg("--pow-dir")
        .arg(&project)
        .args(["source", "load", "ConnectomeCSVDataSource:nuclei", "--json"])
        .args(["--bind", "127.0.0.1", "--port", &free_port().to_string()])
        .args(["--torrent-store", &format!("{}/torrents", server.url)])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "load: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    let md5_check = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "md5-torrent-name")
        .unwrap();
    assert_eq!(md5_check["outcome"], "passed", "{report}");
    let loaded = PathBuf::from(report["content"].as_str().unwrap());
    assert_eq!(
        std::fs::read(&loaded).unwrap(),
        std::fs::read(&zip).unwrap()
    );
    println!(
        "pow source load via {}/torrents: {} bytes, checks {}",
        server.url, report["bytes"], report["checks"]
    );
}

/// A zip over `--max-upload-size` is refused by the page before anything is sent, saying the
/// limit. It was sent, and the server's 413 (given before the body is read) reached the
/// browser, still sending, as a lost connection.
#[test]
fn a_zip_over_the_limit_is_refused_by_the_page_before_it_is_sent() {
    let work = TempDir::new("serve-browser-limit");
    let zip = work.path().join("too big.zip");
    make_zip(&zip, 1, 12);
    let size = std::fs::metadata(&zip).unwrap().len();
    let limit = (size / 2).to_string();
    let server = Server::start(
        &work.path().join("server"),
        free_port(),
        &["--max-upload-size", &limit],
    );
    let browser = Browser::start();
    browser.go(&server.url);
    let file_input = browser.wait_for("#file", Duration::from_secs(20));
    browser.type_into(&file_input, zip.to_str().unwrap());
    browser.click(&browser.find("#submit").unwrap());
    let status = browser.wait_for("#upload-status[data-error]", Duration::from_secs(20));
    let text = browser.text(&status);
    println!("page: {text:?}");
    assert!(
        text.contains(&format!("too big.zip is {size} bytes"))
            && text.contains(&format!("({limit} bytes)")),
        "{text}"
    );
    drop(browser);
    assert!(server.datasets().is_empty());
    assert!(
        server.files_in("incoming").is_empty(),
        "{:?}",
        server.files_in("incoming")
    );
}

/// Zips of `kib` KiB each, `count` of them, distinct bytes (one Python call for all).
fn make_small_zips(dir: &Path, count: usize, kib: usize) -> Vec<PathBuf> {
    let script = format!(
        "import random, zipfile\n\
         for i in range({count}):\n\
         \x20   r = random.Random(1000 + i)\n\
         \x20   with zipfile.ZipFile('{dir}/small-%02d.zip' % i, 'w', zipfile.ZIP_STORED) as z:\n\
         \x20       z.writestr('slice.csv', r.randbytes({kib} * 1024))\n",
        dir = dir.display()
    );
    assert!(Command::new("python3")
        .args(["-c", &script])
        .status()
        .unwrap()
        .success());
    (0..count)
        .map(|i| dir.join(format!("small-{i:02}.zip")))
        .collect()
}

/// Waits until `incoming/` is empty (a dropped upload is cleaned when the server notices).
fn wait_incoming_empty(server: &Server) {
    wait_incoming(server, 0);
}

/// Waits (up to 10 s) until `incoming/` holds `count` files.
fn wait_incoming(server: &Server, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.files_in("incoming").len() != count {
        assert!(
            Instant::now() < deadline,
            "in incoming/: {:?}, not {count} files",
            server.files_in("incoming")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn bad_uploads_get_their_status_and_leave_nothing_half_written() {
    let work = TempDir::new("serve-bad");
    const LIMIT: usize = 1 << 20;
    let server = Server::start(
        &work.path().join("server"),
        free_port(),
        &[
            "--max-upload-size",
            &LIMIT.to_string(),
            "--token",
            "s3cret",
            // The 50 concurrent uploads below are all taken at once.
            "--max-concurrent-uploads",
            "50",
        ],
    );
    let zips = make_small_zips(work.path(), 51, 16);
    let good = std::fs::read(&zips[50]).unwrap();

    // Not a zip (by content, whatever the name says).
    let (status, reply) = upload(
        &server,
        "data.zip",
        b"%PDF-1.7 this is a PDF, not a zip archive",
    );
    println!("not a zip: {status} {reply}");
    assert_eq!(status, 415);
    assert!(reply["error"].as_str().unwrap().contains("not a zip"));
    // A zip cut short: header right, end record missing.
    let (status, reply) = upload(&server, "cut.zip", &good[..good.len() - 100]);
    println!("truncated zip: {status} {reply}");
    assert_eq!(status, 415);
    // Empty.
    let (status, reply) = upload(&server, "empty.zip", b"");
    println!("empty: {status} {reply}");
    assert_eq!(
        (status, reply["error"].as_str().unwrap()),
        (400, "the file is empty")
    );
    // Over the limit, found while streaming (the request is within the limit plus form overhead).
    let mut over = good.clone();
    over.resize(LIMIT + 10, 0);
    let (status, reply) = upload(&server, "big.zip", &over);
    println!("over the limit (streamed): {status} {reply}");
    assert_eq!(status, 413);
    // Far over the limit: refused from Content-Length before the body is read.
    let huge = vec![0u8; 8 * LIMIT];
    let (status, reply) = upload(&server, "huge.zip", &huge);
    println!("over the limit (Content-Length): {status} {reply}");
    assert_eq!(status, 413);
    // A form posted by another site's page (a browser says whose page in `Origin`): refused
    // unread. The server's own page (its `Origin` is the host it was reached by) is taken.
    let (content_type, body) = form("planted.zip", &good, None);
    let (status, reply) = raw_request(
        &server.addr,
        "POST",
        "/upload",
        &[
            ("Content-Type", &content_type),
            ("Origin", "https://example.com"),
        ],
        &body,
    );
    println!("upload from another site's page: {status} {reply}");
    assert_eq!(status, 403);
    let own = format!("http://{}", server.addr);
    let (content_type, body) = form("empty.zip", b"", None);
    let (status, _) = raw_request(
        &server.addr,
        "POST",
        "/upload",
        &[("Content-Type", &content_type), ("Origin", &own)],
        &body,
    );
    assert_eq!(status, 400, "the own page's upload is read (and is empty)");
    // Not multipart at all; a form without a file.
    let (status, _) = raw_request(
        &server.addr,
        "POST",
        "/upload",
        &[("Content-Type", "text/plain")],
        b"hi",
    );
    assert_eq!(status, 400);
    let (content_type, body) = form("x.zip", b"", None);
    let body = String::from_utf8(body)
        .unwrap()
        .replace("name=\"file\"", "name=\"other\"");
    let (status, reply) = raw_request(
        &server.addr,
        "POST",
        "/upload",
        &[("Content-Type", &content_type)],
        body.as_bytes(),
    );
    println!("no file field: {status} {reply}");
    assert_eq!(status, 400);
    // A form that never sends its boundary: the parser would hold everything before it in
    // memory (up to the declared length, or without end when chunked), waiting for one. It
    // is stopped once more than the form's overhead has come that is not the file.
    let head = format!(
        "POST /upload HTTP/1.1\r\nContent-Type: multipart/form-data; boundary=XyZ\r\n\
         Accept: application/json\r\nContent-Length: {}\r\n",
        LIMIT
    );
    let (status, reply) = answer_before_body_ends(&server.addr, &head, &vec![b'a'; 256 << 10]);
    println!("no boundary in 256 KiB: {status} {reply}");
    assert_eq!(status, 400);
    assert!(reply.contains("are not the file's"), "{reply}");
    let chunked = "POST /upload HTTP/1.1\r\nContent-Type: multipart/form-data; boundary=XyZ\r\n\
                   Transfer-Encoding: chunked\r\n";
    let mut chunks = Vec::new();
    for _ in 0..64 {
        chunks.extend_from_slice(format!("{:x}\r\n", 4096).as_bytes());
        chunks.extend_from_slice(&[b'-'; 4096]);
        chunks.extend_from_slice(b"\r\n");
    }
    let (status, reply) = answer_before_body_ends(&server.addr, chunked, &chunks);
    println!("chunked, no boundary in 256 KiB: {status} {reply}");
    assert_eq!(status, 400);
    wait_incoming_empty(&server);
    assert!(
        server.files_in("torrents").is_empty(),
        "{:?}",
        server.files_in("torrents")
    );
    assert!(server.files_in("content").is_empty());

    // The connection dropped mid-upload: nothing is left behind.
    let (content_type, body) = form("dropped.zip", &good, None);
    let mut stream = TcpStream::connect(&server.addr).unwrap();
    write!(
        stream,
        "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    stream.write_all(&body[..body.len() / 2]).unwrap();
    // The upload is being received.
    wait_incoming(&server, 1);
    drop(stream);
    wait_incoming_empty(&server);
    assert!(server.files_in("torrents").is_empty());
    println!("dropped connection: incoming/ emptied, nothing stored");

    // A control byte in the file name is not valid in a form header: refused, nothing kept.
    let (status, reply) = upload(&server, "evil\u{1}.zip", &good);
    println!("control byte in the name: {status} {reply}");
    assert_eq!(status, 400);
    wait_incoming_empty(&server);
    // A hostile file name: stored under a derived name, inside the server's directory.
    let hostile = "../../../etc/cron.d/\u{e9}vil \u{2603};rm -rf.zip";
    let (status, reply) = upload(&server, hostile, &good);
    println!(
        "hostile name {hostile:?}: {status}, stored as {}",
        reply["name"]
    );
    assert_eq!(status, 201);
    assert_eq!(reply["name"], "_vil___rm_-rf.zip");
    let md5 = reply["md5"].as_str().unwrap();
    let stored = server
        .data
        .join("content")
        .join(md5)
        .join("_vil___rm_-rf.zip");
    assert!(stored.is_file());
    // The same bytes again: the existing dataset, nothing rewritten.
    let (status, again) = upload(&server, "other-name.zip", &good);
    assert_eq!(
        (status, &again["published"], &again["name"]),
        (200, &"existing".into(), &"_vil___rm_-rf.zip".into())
    );

    // 50 concurrent uploads: every one stored, under its own MD5, with its own bytes.
    let started = Instant::now();
    let results: Vec<(u16, serde_json::Value)> = std::thread::scope(|scope| {
        let handles: Vec<_> = zips[..50]
            .iter()
            .map(|zip| {
                let server = &server;
                scope.spawn(move || {
                    let bytes = std::fs::read(zip).unwrap();
                    upload(server, zip.file_name().unwrap().to_str().unwrap(), &bytes)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    println!(
        "50 concurrent uploads answered in {:.2} s",
        started.elapsed().as_secs_f64()
    );
    for (zip, (status, reply)) in zips.iter().zip(&results) {
        assert_eq!(*status, 201, "{}: {reply}", zip.display());
        assert_eq!(reply["md5"], md5_hex(zip));
        let stored = server
            .data
            .join("content")
            .join(reply["md5"].as_str().unwrap())
            .join(reply["name"].as_str().unwrap());
        assert_eq!(std::fs::read(&stored).unwrap(), std::fs::read(zip).unwrap());
        let torrent = server
            .data
            .join("torrents")
            .join(format!("{}.torrent", reply["md5"].as_str().unwrap()));
        let verify = pow()
            .arg("verify")
            .arg(&torrent)
            .arg("--data")
            .arg(stored.parent().unwrap())
            .output()
            .unwrap();
        assert!(
            verify.status.success(),
            "{}",
            String::from_utf8_lossy(&verify.stdout)
        );
    }
    let torrents = server.files_in("torrents");
    assert_eq!(torrents.len(), 51, "{torrents:?}");
    assert!(
        torrents
            .iter()
            .all(|t| t.ends_with(".torrent") && !t.starts_with('.')),
        "{torrents:?}"
    );
    wait_incoming_empty(&server);
    for dataset in server.datasets() {
        assert!(dataset["status"]["seeding"] == true, "{dataset}");
    }

    // PUT into the store: only with the token, only <md5>.torrent, only a valid torrent.
    let torrent = std::fs::read(server.data.join("torrents").join(&torrents[0])).unwrap();
    let name = "0123456789abcdef0123456789abcdef.torrent";
    let path = format!("/torrents/{name}");
    let (status, _) = raw_request(&server.addr, "PUT", &path, &[], &torrent);
    assert_eq!(status, 401);
    // Without the token, the body is never read: the answer comes before it.
    let head = format!("PUT {path} HTTP/1.1\r\nContent-Length: 1000000\r\n");
    let (status, _) = answer_before_body_ends(&server.addr, &head, b"d8:announce");
    assert_eq!(status, 401);
    // With it, a body larger than any torrent the store takes is refused unread.
    let head = format!(
        "PUT {path} HTTP/1.1\r\nAuthorization: Bearer s3cret\r\nContent-Length: {}\r\n",
        200 << 20
    );
    let (status, reply) = answer_before_body_ends(&server.addr, &head, b"d8:announce");
    println!("PUT of 200 MiB: {status} {reply}");
    assert_eq!(status, 413);
    // A chunked body is refused as too large once it is (it was a 400).
    let head = format!(
        "PUT {path} HTTP/1.1\r\nAuthorization: Bearer s3cret\r\nTransfer-Encoding: chunked\r\n"
    );
    let over = (64 << 20) + 1;
    let mut part = format!("{over:x}\r\n").into_bytes();
    part.resize(part.len() + over, b'd');
    let (status, reply) = answer_before_body_ends(&server.addr, &head, &part);
    println!("chunked PUT of 64 MiB and a byte: {status} {reply}");
    assert_eq!(status, 413, "{reply}");
    let (status, _) = raw_request(
        &server.addr,
        "PUT",
        &path,
        &[("Authorization", "Bearer wrong")],
        &torrent,
    );
    assert_eq!(status, 401);
    let auth = [("Authorization", "Bearer s3cret")];
    let (status, reply) = raw_request(
        &server.addr,
        "PUT",
        "/torrents/../x.torrent",
        &auth,
        &torrent,
    );
    assert!(status == 404 || status == 422, "{status} {reply}");
    let (status, reply) = raw_request(&server.addr, "PUT", &path, &auth, b"d4:junke");
    println!("PUT of a non-torrent: {status} {reply}");
    assert_eq!(status, 422);
    let (status, _) = raw_request(&server.addr, "PUT", &path, &auth, &torrent);
    assert_eq!(status, 201);
    let fetched = http_get(format!("{}{path}", server.url))
        .unwrap()
        .bytes()
        .unwrap();
    assert_eq!(fetched.as_ref(), torrent.as_slice());
    let (status, _) = raw_request(&server.addr, "PUT", &path, &auth, &torrent);
    assert_eq!(status, 200, "the same bytes again");
    let other = std::fs::read(common::fixtures().join("torrents/valid/alice.torrent")).unwrap();
    let (status, reply) = raw_request(&server.addr, "PUT", &path, &auth, &other);
    println!("PUT of other bytes under a stored name: {status} {reply}");
    assert_eq!(status, 409, "never replaced");
    // The scheme's name is case-insensitive (RFC 9110), and a 401 names the scheme it takes.
    let client = http_client_builder().build().unwrap();
    let put = |authorization: &str| {
        client
            .put(format!("{}/torrents/{:032x}.torrent", server.url, 99))
            .header("Authorization", authorization)
            .body(torrent.clone())
            .send()
            .unwrap()
    };
    let refused = put("Bearer wrong");
    assert_eq!(refused.status().as_u16(), 401);
    assert_eq!(refused.headers()["www-authenticate"], "Bearer");
    assert_eq!(put("bearer s3cret").status().as_u16(), 201);
    // Two PUTs of other bytes under one new name at once: one is stored, the other refused
    // (each passed the "not there yet" check before either wrote, and both were stored,
    // the last one winning, sometimes through one shared temp file).
    for round in 0..8 {
        let name = format!("{round:032x}.torrent");
        let path = format!("/torrents/{name}");
        let barrier = std::sync::Barrier::new(2);
        let statuses: Vec<(u16, &[u8])> = std::thread::scope(|scope| {
            let put = |bytes: &'static [u8]| {
                let (path, barrier, addr) = (&path, &barrier, &server.addr);
                scope.spawn(move || {
                    barrier.wait();
                    (raw_request(addr, "PUT", path, &auth, bytes).0, bytes)
                })
            };
            let first: &'static [u8] = torrent.clone().leak();
            let second: &'static [u8] = other.clone().leak();
            let handles = [put(first), put(second)];
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let mut codes: Vec<u16> = statuses.iter().map(|s| s.0).collect();
        codes.sort_unstable();
        assert_eq!(codes, [201, 409], "round {round}");
        let stored = std::fs::read(server.data.join("torrents").join(&name)).unwrap();
        let written = statuses.iter().find(|s| s.0 == 201).unwrap().1;
        assert_eq!(
            stored, written,
            "round {round}: the bytes stored are the 201's"
        );
    }
    let index = http_get(format!("{}/torrents/index.json", server.url))
        .unwrap()
        .text()
        .unwrap();
    assert!(index.contains(name));
    let (status, _) = raw_request(
        &server.addr,
        "GET",
        "/torrents/ffffffffffffffffffffffffffffffff.torrent",
        &[],
        b"",
    );
    assert_eq!(status, 404);

    // A torrent put under a zip's MD5 that describes other content: an upload of that zip
    // cannot be published under it, and the store never replaces it: 409, nothing kept.
    let zip = work.path().join("put-first.zip");
    make_zip(&zip, 1, 77);
    upload_conflicts_with_put_torrent(&server, &auth, &zip, &other, "never replaces");
    // The same, with a torrent of a file of the same size and one byte changed: its pieces
    // are checked against the upload, which is removed again.
    let zip = work.path().join("put-second.zip");
    make_zip(&zip, 1, 79);
    let mut changed = std::fs::read(&zip).unwrap();
    changed[1000] ^= 1;
    let changed_path = work.path().join("changed.zip");
    std::fs::write(&changed_path, &changed).unwrap();
    let options = pow_metainfo::create::CreateOptions::default();
    let torrent = pow_metainfo::create::create(&changed_path, &options).unwrap();
    upload_conflicts_with_put_torrent(&server, &auth, &zip, &torrent.bytes, "pieces verify");
}

/// PUTs `put` as `<md5 of zip>.torrent`, then uploads `zip`: 409 saying `why`, the put torrent
/// unchanged, and neither content nor a part file left.
fn upload_conflicts_with_put_torrent(
    server: &Server,
    auth: &[(&str, &str)],
    zip: &Path,
    put: &[u8],
    why: &str,
) {
    let md5 = md5_hex(zip);
    let name = format!("{md5}.torrent");
    let (status, _) = raw_request(&server.addr, "PUT", &format!("/torrents/{name}"), auth, put);
    assert_eq!(status, 201);
    let file_name = zip.file_name().unwrap().to_str().unwrap();
    let (status, reply) = upload(server, file_name, &std::fs::read(zip).unwrap());
    println!(
        "an upload of {file_name} under a put torrent that does not describe it: {status} {reply}"
    );
    assert_eq!(status, 409, "{reply}");
    assert!(reply["error"].as_str().unwrap().contains(why), "{reply}");
    let stored = std::fs::read(server.data.join("torrents").join(&name)).unwrap();
    assert!(stored == put, "the torrent put there was replaced");
    assert!(!server.files_in("content").contains(&md5));
    wait_incoming_empty(server);
}

/// `POST /upload` with a chunked body (no Content-Length for the server to check first), sent
/// in 64 KiB chunks; the server may answer and close before it has all of it.
fn upload_chunked(server: &Server, file_name: &str, bytes: &[u8]) -> (u16, serde_json::Value) {
    let (content_type, body) = form(file_name, bytes, None);
    let mut stream = TcpStream::connect(&server.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let head = format!(
        "POST /upload HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Type: {content_type}\r\n\
         Accept: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
        server.addr
    );
    stream.write_all(head.as_bytes()).unwrap();
    let sent = body.chunks(64 * 1024).all(|chunk| {
        stream
            .write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
            .and_then(|()| stream.write_all(chunk))
            .and_then(|()| stream.write_all(b"\r\n"))
            .is_ok()
    });
    if sent {
        let _ = stream.write_all(b"0\r\n\r\n");
    }
    let (status, reply) = read_response(&mut stream);
    let json = serde_json::from_str(&reply).unwrap_or_else(|e| panic!("{e}: {reply:?}"));
    (status, json)
}

/// The server's disk full (a 6 MiB tmpfs): an upload larger than the free space is refused
/// from its Content-Length (507) before its body is read; one that fills the disk as it
/// streams (chunked, so no length to check first) gets 507 as well, and its partial file is
/// removed. The dataset published before stays whole and listed, and the next upload that
/// fits is taken. Before, a write that ran out of space answered 500 with the OS error.
#[test]
fn uploads_that_do_not_fit_on_the_disk_get_507_and_leave_nothing() {
    let work = TempDir::new("serve-full");
    let data = work.path().join("server");
    let _disk = match Tmpfs::mount(&data, "6m") {
        Ok(disk) => disk,
        Err(e) => {
            println!("SKIPPED: cannot mount a tmpfs here ({e}); the disk-full case needs root");
            return;
        }
    };
    let server = Server::start(&data, free_port(), &[]);
    let (first, _) = upload_seeding(&server, work.path(), "first.zip", 2, 1);

    let big = work.path().join("big.zip");
    make_zip(&big, 5, 2);
    let big = std::fs::read(&big).unwrap();
    let (status, reply) = upload(&server, "big.zip", &big);
    println!("over the free space (Content-Length): {status} {reply}");
    assert_eq!(status, 507, "{reply}");
    assert!(
        reply["error"].as_str().unwrap().contains("bytes free"),
        "{reply}"
    );
    let (status, reply) = upload_chunked(&server, "big.zip", &big);
    println!("over the free space (chunked, found while writing): {status} {reply}");
    assert_eq!(status, 507, "{reply}");
    assert!(
        reply["error"].as_str().unwrap().contains("disk is full"),
        "{reply}"
    );
    wait_incoming_empty(&server);

    let datasets = server.datasets();
    assert_eq!(datasets.len(), 1, "{datasets:?}");
    let md5 = first["md5"].as_str().unwrap();
    let url = format!(
        "{}/content/{md5}/{}",
        server.url,
        first["name"].as_str().unwrap()
    );
    let served = http_get(url).unwrap().bytes().unwrap();
    let original = std::fs::read(work.path().join("first.zip")).unwrap();
    assert!(served == original, "the first dataset's bytes changed");

    let small = work.path().join("small.zip");
    make_zip(&small, 1, 3);
    let (status, reply) = upload_chunked(&server, "small.zip", &std::fs::read(&small).unwrap());
    println!("an upload that fits, after: {status}");
    assert_eq!(status, 201, "{reply}");
    server.wait_seeding(reply["md5"].as_str().unwrap());
}

/// The embedded tracker listening on every address (0.0.0.0): new torrents name it by
/// --public-url's host, not as `http://0.0.0.0:PORT/announce`, which no other machine reaches.
#[test]
fn a_tracker_on_every_address_is_named_by_the_public_url_host() {
    let work = TempDir::new("serve-public");
    let data = work.path().join("server");
    let tracker_port = free_port();
    let server = Server::start_with_tracker(
        &data,
        &format!("0.0.0.0:{tracker_port}"),
        &["--public-url", "http://localhost:8080"],
    );
    let zip = work.path().join("one.zip");
    make_zip(&zip, 1, 41);
    let (status, reply) = upload(&server, "one.zip", &std::fs::read(&zip).unwrap());
    assert_eq!(status, 201, "{reply}");
    let torrent = work.path().join("one.torrent");
    save_torrent(&server, &reply, &torrent);
    let metainfo = pow_metainfo::Metainfo::from_file(&torrent).unwrap();
    println!(
        "tracker on 0.0.0.0:{tracker_port}: torrents name {:?}",
        metainfo.announce
    );
    assert_eq!(
        metainfo.announce.as_deref(),
        Some(format!("http://localhost:{tracker_port}/announce").as_str())
    );
}

/// A description is limited in characters, as the page's `maxlength` limits it, a line break
/// (which a browser sends as CRLF) counting once: a limit of 4096 bytes refused what the page
/// let through (1,400 CJK characters), after the whole file had arrived.
#[test]
fn a_description_is_limited_in_characters_as_the_page_limits_it() {
    let work = TempDir::new("serve-description");
    let server = Server::start(&work.path().join("server"), free_port(), &[]);
    let page = http_get(&server.url).unwrap().text().unwrap();
    assert!(page.contains("maxlength=\"4096\""), "{page}");
    let longest = format!("{}\r\n{}y", "数".repeat(1400), "x\r\n".repeat(1347));
    let zip = work.path().join("a.zip");
    make_zip(&zip, 1, 51);
    let bytes = std::fs::read(&zip).unwrap();
    let (status, reply) = upload_described(&server, "a.zip", &bytes, Some(&longest));
    println!(
        "4096 characters in {} bytes: {status} {reply}",
        longest.len()
    );
    assert_eq!(status, 201, "{reply}");
    let stored = server.dataset(reply["md5"].as_str().unwrap()).unwrap();
    assert_eq!(stored["description"], longest.replace("\r\n", "\n"));
    make_zip(&zip, 1, 52);
    let bytes = std::fs::read(&zip).unwrap();
    let (status, reply) = upload_described(&server, "a.zip", &bytes, Some(&format!("{longest}z")));
    println!("4097 characters: {status} {reply}");
    assert_eq!(status, 400, "{reply}");
    assert!(
        reply.to_string().contains("longer than 4096 characters"),
        "{reply}"
    );
}

/// Without --data the server's directory is `serve` in the project directory POW_DIR (or
/// --pow-dir) names (it was ./.pow/serve whatever they said).
#[test]
fn without_data_the_server_lives_in_the_pow_dir() {
    let work = TempDir::new("serve-pow-dir");
    let project = work.path().join("project");
    let mut child = common::serve::serve_command(&format!("127.0.0.1:{}", free_port()))
        .env("POW_DIR", &project)
        .current_dir(work.path())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let line = common::first_stdout_line(&mut child);
    let _ = child.kill();
    let _ = child.wait();
    println!("POW_DIR=project pow serve: {line}");
    assert!(project.join("serve").is_dir(), "no project/serve");
    assert!(
        !work.path().join(".pow").exists(),
        "./.pow made beside --pow-dir"
    );
}

/// Opens an upload of `bytes` and sends half its body: an upload in flight, for as long as
/// the returned stream is left alone.
fn upload_half(server: &Server, file_name: &str, bytes: &[u8]) -> TcpStream {
    let (content_type, body) = form(file_name, bytes, None);
    let mut stream = TcpStream::connect(&server.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    write!(
        stream,
        "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\n\
         Accept: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    stream.write_all(&body[..body.len() / 2]).unwrap();
    stream
}

/// A server that takes one upload at a time refuses a second one while the first is in
/// flight (503, with Retry-After), before reading it; the first, stalled, is dropped after
/// the idle timeout (408) and leaves no part file; then an upload is taken again. Before,
/// uploads had neither limit: any number of clients could each hold a part file and a task
/// for as long as they kept their connections open.
#[test]
fn uploads_are_limited_in_number_and_a_stalled_one_is_dropped() {
    let work = TempDir::new("serve-limits");
    let server = Server::start(
        &work.path().join("server"),
        free_port(),
        &[
            "--max-concurrent-uploads",
            "1",
            "--upload-idle-timeout",
            "2",
            "--upload-min-rate",
            "2K",
        ],
    );
    let zip = work.path().join("a.zip");
    make_zip(&zip, 2, 31);
    let bytes = std::fs::read(&zip).unwrap();
    let mut stalled = upload_half(&server, "stalled.zip", &bytes);
    wait_incoming(&server, 1);
    let stalled_at = Instant::now();

    let (content_type, body) = form("second.zip", &bytes, None);
    let mut second = TcpStream::connect(&server.addr).unwrap();
    write!(
        second,
        "POST /upload HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: {content_type}\r\n\
         Accept: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    let mut reply = String::new();
    let _ = second.read_to_string(&mut reply);
    println!(
        "a second upload while one is in flight: {}",
        reply.lines().next().unwrap_or("")
    );
    assert!(reply.starts_with("HTTP/1.1 503"), "{reply}");
    assert!(
        reply
            .to_ascii_lowercase()
            .contains("\r\nretry-after: 10\r\n"),
        "{reply}"
    );
    assert!(reply.contains("as many as it takes at once"), "{reply}");

    let (status, reply) = read_response(&mut stalled);
    let waited = stalled_at.elapsed().as_secs_f64();
    println!("the stalled upload: {status} after {waited:.1} s: {reply}");
    assert_eq!(status, 408, "{reply}");
    assert!(reply.contains("sent nothing for 2 s"), "{reply}");
    assert!(waited < 30.0);
    wait_incoming_empty(&server);

    // A trickle, 100 bytes every 0.2 s (500 B/s), never idle for 2 s, under the 2 KiB/s
    // asked for after the first 2 s: dropped once it owes more than it sent.
    let (content_type, body) = form("trickle.zip", &bytes, None);
    let mut trickle = TcpStream::connect(&server.addr).unwrap();
    write!(
        trickle,
        "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\n\
         Accept: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    let trickled_at = Instant::now();
    for chunk in body.chunks(100) {
        if trickle.write_all(chunk).is_err() || trickled_at.elapsed() > Duration::from_secs(30) {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let (status, reply) = read_response(&mut trickle);
    let waited = trickled_at.elapsed().as_secs_f64();
    println!("a trickle: {status} after {waited:.1} s: {reply}");
    assert_eq!(status, 408, "{reply}");
    assert!(reply.contains("too slow"), "{reply}");
    assert!(waited < 10.0, "{waited}");
    wait_incoming_empty(&server);

    let (status, reply) = upload(&server, "a.zip", &bytes);
    assert_eq!(status, 201, "{reply}");
}

/// SIGTERM with an upload in flight that never ends: the server gives it a grace period
/// (10 s) and stops, leaving no part file. It used to wait for every request in flight to
/// finish, so a stalled client kept it from stopping for as long as it liked. A second
/// signal stops it at once.
#[test]
fn a_stalled_upload_does_not_keep_the_server_from_stopping() {
    let work = TempDir::new("serve-stop");
    let zip = work.path().join("a.zip");
    make_zip(&zip, 2, 32);
    let bytes = std::fs::read(&zip).unwrap();
    for signals in [1, 2] {
        let mut server = Server::start(
            &work.path().join(format!("server{signals}")),
            free_port(),
            &[],
        );
        let _in_flight = upload_half(&server, "a.zip", &bytes);
        wait_incoming(&server, 1);
        let stop = Instant::now();
        for _ in 0..signals {
            // SAFETY: kill(2) on our own child's pid.
            assert_eq!(
                unsafe { libc::kill(server.child.id() as i32, libc::SIGTERM) },
                0
            );
            std::thread::sleep(Duration::from_millis(500));
        }
        let exit = loop {
            if let Some(exit) = server.child.try_wait().unwrap() {
                break exit;
            }
            assert!(
                stop.elapsed() < Duration::from_secs(40),
                "still running {:.0} s after SIGTERM",
                stop.elapsed().as_secs_f64()
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        let took = stop.elapsed().as_secs_f64();
        println!("{signals} SIGTERM: stopped {took:.1} s after the first, with an upload in flight: {exit}");
        assert!(exit.success(), "{exit}");
        assert!(
            server.files_in("incoming").is_empty(),
            "the part file is left"
        );
        if signals == 2 {
            assert!(
                took < 5.0,
                "the second signal did not stop it at once: {took:.1} s"
            );
        }
    }
}

#[test]
fn server_killed_with_sigkill_seeds_every_dataset_again_without_reupload() {
    let work = TempDir::new("serve-restart");
    let data = work.path().join("server");
    let tracker_port = free_port();
    let mut server = Server::start(&data, tracker_port, &[]);
    let zips = [work.path().join("a.zip"), work.path().join("b.zip")];
    make_zip(&zips[0], 3, 21);
    make_zip(&zips[1], 5, 22);
    let mut md5s = Vec::new();
    for zip in &zips {
        let (status, reply) = upload(
            &server,
            zip.file_name().unwrap().to_str().unwrap(),
            &std::fs::read(zip).unwrap(),
        );
        assert_eq!(status, 201, "{reply}");
        md5s.push(reply["md5"].as_str().unwrap().to_string());
        let dataset = server.wait_seeding(&md5s[md5s.len() - 1]);
        // The upload was hashed once, to make its torrent, and that is recorded: the seed
        // hashed it all again ("full-check") before the uploader was answered.
        assert_eq!(dataset["status"]["started_from"], "file", "{dataset}");
    }
    // A third upload is in flight when the server is killed.
    let (content_type, body) = form(
        "in-flight.zip",
        &std::fs::read(&zips[1]).unwrap()[..1 << 20],
        None,
    );
    let mut in_flight = TcpStream::connect(&server.addr).unwrap();
    write!(
        in_flight,
        "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    // Half of it: the form's end is still to come (the whole body, end boundary and all,
    // under a larger Content-Length, was a finished upload, refused as not a zip).
    in_flight.write_all(&body[..body.len() / 2]).unwrap();
    // The upload is in flight.
    wait_incoming(&server, 1);
    // A second server on the same directory is refused before it touches anything: opening
    // it used to clear incoming/ (the first one's upload in flight) and unpublished content.
    let second = pow()
        .args(["serve", "--listen", "127.0.0.1:0", "--peer-port", "0"])
        .args(["--tracker-listen", &format!("127.0.0.1:{}", free_port())])
        .arg("--data")
        .arg(&data)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&second.stderr);
    println!("a second server on the same --data: {}", stderr.trim());
    assert!(!second.status.success());
    assert!(stderr.contains("in use by another pow serve"), "{stderr}");
    assert_eq!(
        server.files_in("incoming").len(),
        1,
        "the upload in flight was removed"
    );
    let mtimes: Vec<_> = md5s
        .iter()
        .map(|m| {
            std::fs::metadata(data.join("torrents").join(format!("{m}.torrent")))
                .unwrap()
                .modified()
                .unwrap()
        })
        .collect();
    server.kill();
    drop(in_flight);

    let started = Instant::now();
    let server = Server::start(&data, tracker_port, &[]);
    assert_eq!(server.datasets_at_start, 2);
    for md5 in &md5s {
        let dataset = server.wait_seeding(md5);
        assert_eq!(dataset["status"]["started_from"], "file", "{dataset}");
    }
    println!(
        "restart after kill -9: both datasets seeding again {:.2} s after start",
        started.elapsed().as_secs_f64()
    );
    assert!(
        server.files_in("incoming").is_empty(),
        "the in-flight upload was cleared"
    );
    assert_eq!(server.files_in("content"), {
        let mut m = md5s.clone();
        m.sort();
        m
    });
    for (md5, mtime) in md5s.iter().zip(&mtimes) {
        let now = std::fs::metadata(data.join("torrents").join(format!("{md5}.torrent")))
            .unwrap()
            .modified()
            .unwrap();
        assert_eq!(now, *mtime, "torrents were not rewritten");
    }
    let dataset = server.dataset(&md5s[1]).unwrap();
    let downloaded = aria2_download(&server, &dataset, work.path(), &[]);
    assert_eq!(
        std::fs::read(&downloaded).unwrap(),
        std::fs::read(&zips[1]).unwrap()
    );
}

/// A dataset whose seed failed (its content damaged on disk while the server was stopped) is
/// repaired by uploading the same zip again: the upload replaces the content and the seed
/// starts. It was answered "existing" and dropped, the page said "it is being seeded", and
/// the dataset stayed unseeded, its damaged bytes served, until the file was replaced by hand.
#[test]
fn uploading_a_datasets_bytes_again_repairs_its_failed_seed() {
    let work = TempDir::new("serve-repair");
    let data = work.path().join("server");
    let tracker_port = free_port();
    let mut server = Server::start(&data, tracker_port, &[]);
    let (dataset, _) = upload_seeding(&server, work.path(), "cells.zip", 2, 31);
    let md5 = dataset["md5"].as_str().unwrap().to_string();
    server.kill();
    let content = data.join("content").join(&md5).join("cells.zip");
    let original = std::fs::read(&content).unwrap();
    let mut damaged = original.clone();
    let middle = damaged.len() / 2;
    damaged[middle] ^= 0xff;
    std::fs::write(&content, &damaged).unwrap();

    let server = Server::start(&data, tracker_port, &[]);
    let deadline = Instant::now() + Duration::from_secs(30);
    let failed = loop {
        let status = server.dataset(&md5).unwrap()["status"].clone();
        if status["error"].is_string() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the damaged seed never failed: {status}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    println!("damaged on disk: {failed}");
    assert!(
        failed["error"].as_str().unwrap().contains("pieces verify"),
        "{failed}"
    );
    let (status, reply) = upload(&server, "cells.zip", &original);
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["published"], "existing", "{reply}");
    server.wait_seeding(&md5);
    assert!(
        std::fs::read(&content).unwrap() == original,
        "content not replaced"
    );
    let page = http_get(format!("{}/?published={md5}", server.url))
        .unwrap()
        .text()
        .unwrap();
    assert!(page.contains("it is being seeded"), "{page}");

    // Other bytes under that MD5 (a size or SHA-256 of its own) would replace nothing; what
    // can be shown here: the same bytes to a seeding dataset change nothing.
    let (status, reply) = upload(&server, "cells.zip", &original);
    assert_eq!((status, &reply["published"]), (200, &"existing".into()));
}

#[test]
fn pow_publish_puts_its_torrent_into_a_server_store_with_the_token() {
    let work = TempDir::new("serve-publish");
    let server = Server::start(
        &work.path().join("server"),
        free_port(),
        &["--token", "publish-token"],
    );
    let zip = work.path().join("worms.zip");
    make_zip(&zip, 2, 31);
    let md5 = md5_hex(&zip);
    let project = work.path().join("project");
    assert!(pow()
        .arg("--pow-dir")
        .arg(&project)
        .arg("init")
        .status()
        .unwrap()
        .success());
    let store = format!("{}/torrents", server.url);
    let publish = |token: &str, extra: &[&str]| {
        pow()
            .arg("--pow-dir")
            .arg(&project)
            .arg("publish")
            .arg(&zip)
            .args(["--torrent-store", &store, "--no-seed", "--json"])
            .args(["--key", "worms", "--token", token])
            .args(extra)
            .output()
            .unwrap()
    };
    let refused = publish("wrong", &[]);
    let error = String::from_utf8_lossy(&refused.stderr);
    println!("publish with a wrong token: {}", error.trim());
    assert!(!refused.status.success());
    assert!(error.contains("401"), "{error}");
    assert!(server.files_in("torrents").is_empty());

    // Not the piece length the server picks for an upload: another info-hash than its own.
    let out = publish("publish-token", &["--piece-length", "65536"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().last().unwrap()).unwrap();
    println!("publish to {store}: {report}");
    assert_eq!(report["stored"], "written");
    assert_eq!(report["torrent_file_name"], format!("{md5}.torrent"));
    let served = http_get(format!("{store}/{md5}.torrent"))
        .unwrap()
        .bytes()
        .unwrap();
    let metainfo = pow_metainfo::Metainfo::from_bytes(&served).unwrap();
    assert_eq!(
        metainfo.info_hash.to_hex(),
        report["info_hash"].as_str().unwrap()
    );
    // Publishing the same bytes again changes nothing, even with another piece length: the
    // record names the torrent the store holds.
    let again = publish("publish-token", &[]);
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    let report: serde_json::Value = serde_json::from_str(
        String::from_utf8_lossy(&again.stdout)
            .lines()
            .last()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(report["stored"], "existing");
    assert_eq!(
        report["info_hash"].as_str().unwrap(),
        metainfo.info_hash.to_hex()
    );
    let shown = pow()
        .arg("--pow-dir")
        .arg(&project)
        .args(["source", "show", "LocalFileDataSource:worms"])
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(
        shown.contains(&format!(
            "BitTorrent info-hash: '{}'",
            metainfo.info_hash.to_hex()
        )),
        "{shown}"
    );

    // The same bytes uploaded through the page are published under the torrent put there:
    // the store never replaces a torrent, and the publisher's record names it. The upload
    // used to write the server's own torrent over it, and the record no longer loaded.
    let (status, reply) = upload(&server, "worms.zip", &std::fs::read(&zip).unwrap());
    println!("the same bytes uploaded: {status} {reply}");
    assert_eq!(status, 201, "{reply}");
    assert_eq!(reply["info_hash"], metainfo.info_hash.to_hex().as_str());
    let stored = std::fs::read(server.data.join("torrents").join(format!("{md5}.torrent")));
    assert!(
        stored.unwrap() == served,
        "the torrent put there was replaced"
    );
    let dataset = server.wait_seeding(&md5);
    // Checked against the torrent put there, every piece, and recorded so.
    assert_eq!(dataset["status"]["started_from"], "file", "{dataset}");
    // The publisher's record loads: its torrent from the store, its bytes from the server.
    let base = work.path().join("loaded");
    let out = pow()
        .arg("--pow-dir")
        .arg(&project)
        .args(["source", "load", "LocalFileDataSource:worms", "--json"])
        .args(["--bind", "127.0.0.1", "--port", &free_port().to_string()])
        .args(["--torrent-store", &store])
        .args(["--peer", &format!("127.0.0.1:{}", server.peer_port)])
        .arg("--base-dir")
        .arg(&base)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "load: {} {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read(base.join("worms.zip")).unwrap(),
        std::fs::read(&zip).unwrap()
    );
}

#[test]
fn the_server_is_a_web_seed_for_what_it_publishes() {
    let work = TempDir::new("serve-webseed");
    let server = Server::start(&work.path().join("server"), free_port(), &[]);
    let zip = work.path().join("slices.zip");
    make_zip(&zip, 3, 41);
    let bytes = std::fs::read(&zip).unwrap();
    let (status, dataset) = upload(&server, "slices.zip", &bytes);
    assert_eq!(status, 201, "{dataset}");
    let md5 = dataset["md5"].as_str().unwrap();
    let torrent = http_get(format!("{}/torrents/{md5}.torrent", server.url))
        .unwrap()
        .bytes()
        .unwrap();
    let metainfo = pow_metainfo::Metainfo::from_bytes(&torrent).unwrap();
    assert_eq!(
        metainfo.url_list,
        vec![format!("{}/content/{md5}/", server.url)]
    );
    // BEP 19 single file: the URL ends in `/`, so the name is appended.
    let path = format!("/content/{md5}/slices.zip");
    let (status, body) = raw_request(&server.addr, "GET", &path, &[("Range", "bytes=0-3")], b"");
    assert_eq!((status, body.as_bytes()), (206, &b"PK\x03\x04"[..]));
    let (status, _) = raw_request(
        &server.addr,
        "GET",
        &path,
        &[("Range", "bytes=99999999-")],
        b"",
    );
    assert_eq!(status, 416);
    // Anyone's bytes, from the page's origin: saved, never sniffed into a page to show.
    let response = http_get(format!("{}{path}", server.url)).unwrap();
    let header = |name: &str| response.headers()[name].to_str().unwrap().to_string();
    assert_eq!(header("x-content-type-options"), "nosniff");
    assert_eq!(header("content-disposition"), "attachment");
    // aria2 with every tracker excluded has only the web seed.
    let downloaded = aria2_download(&server, &dataset, work.path(), &["--bt-exclude-tracker=*"]);
    assert_eq!(std::fs::read(&downloaded).unwrap(), bytes);
    println!(
        "aria2 downloaded {} bytes from the server as a web seed only",
        bytes.len()
    );
}

/// `pow serve --super-seed` (BEP 16): a peer that connects to a dataset's seed is told of a few
/// pieces at a time (`have-none`, then single `have`s: 16 MiB worth of a 48 MiB dataset), not
/// of all of them at once.
#[test]
fn with_super_seed_a_peer_hears_of_a_few_pieces_at_a_time() {
    const HAVE: u8 = 4;
    const HAVE_ALL: u8 = 0x0e;
    const HAVE_NONE: u8 = 0x0f;
    let work = TempDir::new("serve-super");
    let server = Server::start(&work.path().join("srv"), free_port(), &["--super-seed"]);
    let (dataset, info_hash) = upload_seeding(&server, work.path(), "super.zip", 48, 41);
    let pieces = dataset["status"]["pieces_total"].as_u64().unwrap();
    let mut fast = [0u8; 8];
    fast[7] |= 0x04;
    let (mut peer, _) =
        common::raw_peer::RawPeer::connect_reserved(server.peer_port, info_hash, fast);
    let (seen, _) = peer.drain(Duration::from_secs(3));
    let haves = seen.iter().filter(|&&id| id == HAVE).count() as u64;
    println!("super-seed: a new peer was told: have-none, then {haves} of {pieces} pieces");
    assert_eq!(seen.first(), Some(&HAVE_NONE), "{seen:?}");
    assert!(!seen.contains(&HAVE_ALL) && !seen.contains(&common::raw_peer::BITFIELD));
    assert!(
        haves >= 1 && haves < pieces,
        "{haves} of {pieces} pieces told"
    );
}

/// `pow serve --max-upload-rate 2M` caps every dataset's seed and the web seed's bodies
/// together: two aria2 downloads of two 4 MiB datasets at once (from the peer and the web seed
/// each torrent names) take at least (8 MiB less the 128 KiB first burst) / 2 MiB/s = 3.94 s,
/// where one 4 MiB dataset alone would need only half that.
#[test]
fn max_upload_rate_caps_all_datasets_and_the_web_seed_together() {
    let work = TempDir::new("serve-limit");
    let server = Server::start(
        &work.path().join("srv"),
        free_port(),
        &["--max-upload-rate", "2M"],
    );
    let mut datasets = Vec::new();
    for (i, name) in ["limit-a.zip", "limit-b.zip"].iter().enumerate() {
        let zip = work.path().join(name);
        make_zip(&zip, 4, 60 + i as u64);
        let (status, reply) = upload(&server, name, &std::fs::read(&zip).unwrap());
        assert_eq!(status, 201, "{reply}");
        server.wait_seeding(reply["md5"].as_str().unwrap());
        datasets.push((zip, reply));
    }
    let started = Instant::now();
    std::thread::scope(|scope| {
        for (i, (zip, dataset)) in datasets.iter().enumerate() {
            let (server, into) = (&server, work.path().join(format!("aria2-{i}")));
            scope.spawn(move || {
                std::fs::create_dir_all(&into).unwrap();
                let downloaded = aria2_download(server, dataset, &into, &[]);
                common::same_bytes(zip, &downloaded).unwrap();
            });
        }
    });
    let took = started.elapsed().as_secs_f64();
    println!(
        "pow serve --max-upload-rate 2M: two 4 MiB datasets to two aria2 at once in {took:.2} s"
    );
    assert!(
        took >= 3.94,
        "8 MiB in {took:.2} s: faster than 2 MiB/s allows"
    );
}

/// `pow serve --dht-bootstrap`: each dataset it seeds is announced on the DHT, with the peer
/// port; a libtorrent DHT node accepts the announce.
#[test]
fn the_server_announces_each_dataset_on_the_dht() {
    let work = TempDir::new("serve-dht");
    let pc = free_port();
    let script = "pc = int(sys.argv[1])
c = session(pc)
print('ready', flush=True)
t0 = time.time()
while time.time() - t0 < 60:
    for a in c.pop_alerts():
        if isinstance(a, lt.dht_announce_alert):
            print('%s %s:%d' % (a.info_hash, a.ip, a.port), flush=True)
            time.sleep(300)
    time.sleep(0.2)
";
    let mut node = common::lt_dht_python(script, &[pc.to_string()]);
    let mut lines = std::io::BufReader::new(node.0.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut lines, &mut line).unwrap();
    assert_eq!(line.trim(), "ready");
    let server = Server::start(
        &work.path().join("server"),
        free_port(),
        &["--dht-bootstrap", &format!("127.0.0.1:{pc}")],
    );
    let zip = work.path().join("dht.zip");
    make_zip(&zip, 1, 43);
    let (status, dataset) = upload(&server, "dht.zip", &std::fs::read(&zip).unwrap());
    assert_eq!(status, 201, "{dataset}");
    line.clear();
    std::io::BufRead::read_line(&mut lines, &mut line).unwrap();
    let info_hash = dataset["info_hash"].as_str().unwrap();
    println!("libtorrent's DHT node heard: {line}");
    assert_eq!(
        line.trim(),
        format!("{info_hash} 127.0.0.1:{}", server.peer_port)
    );
}

/// Dials 127.0.0.1:`port` with an encrypted handshake (RC4) keyed for `skey` that carries a
/// BitTorrent handshake for `info_hash`; returns the BitTorrent handshake the other end answers
/// with, decrypted, or `None` when it closes without one.
fn encrypted_dial(port: u16, skey: [u8; 20], info_hash: [u8; 20]) -> Option<Vec<u8>> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut handshake = vec![19];
    handshake.extend_from_slice(b"BitTorrent protocol");
    handshake.extend_from_slice(&[0; 8]);
    handshake.extend_from_slice(&info_hash);
    handshake.extend_from_slice(b"-XX0000-skeytest0000");
    let (mut initiator, first) = pow_mse::Initiator::new(
        skey,
        pow_mse::Methods::RC4_ONLY,
        [9; 20],
        &[3; 64],
        handshake,
    );
    stream.write_all(&first).unwrap();
    let mut buf = bytes::BytesMut::new();
    let mut chunk = [0u8; 4096];
    let mut recv = loop {
        let progress = initiator.step(&mut buf).expect("encrypted handshake");
        if !progress.send.is_empty() {
            stream.write_all(&progress.send).unwrap();
        }
        if let Some(done) = progress.done {
            break done.recv.expect("RC4 chosen");
        }
        let n = stream.read(&mut chunk).unwrap_or(0);
        assert!(n > 0, "closed during the encrypted handshake");
        buf.extend_from_slice(&chunk[..n]);
    };
    while buf.len() < 68 {
        let n = stream.read(&mut chunk).unwrap_or(0);
        if n == 0 {
            return None;
        }
        let start = buf.len();
        buf.extend_from_slice(&chunk[..n]);
        recv.apply(&mut buf[start..]);
    }
    Some(buf[..68].to_vec())
}

/// `pow serve` answers an encrypted handshake on its one peer port for any of its datasets (it
/// names the torrent only by a hash); the BitTorrent handshake inside must then ask for that
/// same dataset. Keyed for one and asking for the other is closed, as libtorrent closes it.
#[test]
fn an_encrypted_handshake_must_ask_for_the_dataset_it_was_keyed_for() {
    let work = TempDir::new("serve-skey");
    let server = Server::start(&work.path().join("srv"), free_port(), &[]);
    let (_, a) = upload_seeding(&server, work.path(), "a.zip", 1, 51);
    let (_, b) = upload_seeding(&server, work.path(), "b.zip", 1, 52);
    let answer = encrypted_dial(server.peer_port, a, a).expect("keyed for a, asking for a");
    assert_eq!(&answer[28..48], &a, "the answer names dataset a");
    let answer = encrypted_dial(server.peer_port, b, b).expect("keyed for b, asking for b");
    assert_eq!(&answer[28..48], &b);
    assert_eq!(
        encrypted_dial(server.peer_port, a, b),
        None,
        "keyed for a and asking for b must be closed"
    );
    println!("  keyed for a: a answered; keyed for b: b answered; keyed for a asking b: closed");
}

/// `pow serve --upload-slots 1`: a second interested peer waits while the first holds the one
/// slot, and gets it as soon as the first leaves: not at the next choking round, and without
/// sending `interested` again (real clients send it once; before the choker, that peer waited
/// for good).
#[test]
fn one_upload_slot_is_held_by_one_peer_and_given_on_at_once() {
    use common::raw_peer::{RawPeer, INTERESTED, UNCHOKE};
    let work = TempDir::new("serve-slots");
    let server = Server::start(
        &work.path().join("srv"),
        free_port(),
        &["--upload-slots", "1"],
    );
    let (_, info_hash) = upload_seeding(&server, work.path(), "slots.zip", 1, 61);
    let mut first = RawPeer::connect(server.peer_port, info_hash);
    first.get_unchoked();
    let mut second = RawPeer::connect(server.peer_port, info_hash);
    second.send(INTERESTED, &[]).unwrap();
    let (seen, _) = second.drain(Duration::from_secs(1));
    assert!(!seen.contains(&UNCHOKE), "a second slot: {seen:?}");
    drop(first);
    let left = Instant::now();
    second.wait_for(UNCHOKE);
    let waited = left.elapsed();
    println!("  the second peer was unchoked {waited:?} after the first left");
    assert!(waited < Duration::from_secs(5), "{waited:?}");
}

/// `pow serve`'s one peer port takes uTP too (UDP, same number): a `pow download --utp
/// prefer` of each of two datasets connects over uTP and is routed to the dataset its
/// handshake names.
#[test]
fn each_dataset_downloads_over_utp_from_the_one_peer_port() {
    let work = TempDir::new("serve-utp");
    let server = Server::start(&work.path().join("srv"), free_port(), &[]);
    for (name, seed) in [("u1.zip", 71), ("u2.zip", 72)] {
        let (dataset, _) = upload_seeding(&server, work.path(), name, 2, seed);
        let torrent = work.path().join(format!("{name}.torrent"));
        save_torrent(&server, &dataset, &torrent);
        let out = work.path().join(format!("out-{name}"));
        let peer = format!("127.0.0.1:{}", server.peer_port);
        let report = common::pow_download_json(
            torrent.to_str().unwrap(),
            &out,
            &["--peer", &peer, "--utp", "prefer"],
        );
        let got = std::fs::read(out.join(name)).unwrap();
        assert_eq!(got, std::fs::read(work.path().join(name)).unwrap());
        println!(
            "{name}: {} bytes over the served peer port; connections {}",
            got.len(),
            report["connections"]
        );
        assert_eq!(report["connections"]["utp"], 1, "{report}");
    }
}

/// A client that hangs up once its upload is sent (a closed tab): the server still publishes
/// and seeds it, and a retry gets the dataset. The publish used to run on after the handler was
/// dropped with the hang-up, without listing the dataset or seeding it, and without its lock:
/// the retry then removed the content of a published dataset (and the record with it), leaving
/// a torrent in the store with nothing behind it.
#[test]
fn an_upload_whose_client_hangs_up_is_still_published_and_seeded() {
    let work = TempDir::new("serve-hang-up");
    let server = Server::start(&work.path().join("server"), free_port(), &[]);
    let zip = work.path().join("closed-tab.zip");
    make_zip(&zip, 256, 91);
    let md5 = md5_hex(&zip);
    let bytes = std::fs::read(&zip).unwrap();
    let (content_type, body) = form("closed-tab.zip", &bytes, None);
    let mut stream = TcpStream::connect(&server.addr).unwrap();
    let head = format!(
        "POST /upload HTTP/1.1\r\nHost: {}\r\nContent-Type: {content_type}\r\n\
         Accept: application/json\r\nContent-Length: {}\r\n\r\n",
        server.addr,
        body.len()
    );
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(&body).unwrap();
    // Hang up once the server is publishing it (the upload moved into content/), before
    // the answer: a hang-up while the body is still being taken in drops the upload.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !server.files_in("content").contains(&md5) {
        assert!(Instant::now() < deadline, "never published");
        std::thread::sleep(Duration::from_millis(1));
    }
    stream.shutdown(std::net::Shutdown::Both).unwrap();
    drop(stream);

    let dataset = server.wait_seeding(&md5);
    println!(
        "published and seeding after its client hung up: {} ({} bytes)",
        dataset["name"], dataset["size"]
    );
    let (status, reply) = upload(&server, "closed-tab.zip", &bytes);
    println!("the retry: {status} {reply}");
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["published"], "existing", "{reply}");
    let stored = server
        .data
        .join("content")
        .join(&md5)
        .join(dataset["name"].as_str().unwrap());
    assert_eq!(
        std::fs::metadata(&stored).unwrap().len(),
        bytes.len() as u64
    );
    assert!(server.files_in("datasets").contains(&format!("{md5}.json")));
    assert!(server
        .files_in("torrents")
        .contains(&format!("{md5}.torrent")));
    server.wait_seeding(&md5);
}
