//! Loader acceptance (`pow source load`): a zip seeded by a real client (libtorrent through
//! swarm-lab), its `<md5>.torrent` in a directory store and in an HTTP store (Python's
//! `http.server`), a TOML definition saved with `pow save`, and one command that leaves the
//! verified file in the base directory and records it in the graph. Then tampering, a missing
//! torrent, a store that is down, and an interrupted load that resumes.

mod common;

use common::{free_port, make_zip, md5_hex, pow, sha256_hex, text, Lab, TempDir, Tmpfs};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const TRACKER: &str = "http://127.0.0.1:6969/announce";
const PIECE: u64 = 256 * 1024;
/// Peer port of the loading pow (swarm-lab's `ext` leecher port, unused by these tests).
const LOAD_PORT: &str = "51205";

fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap()
}

/// A torrent's v1 info-hash as swarm-lab's `torrentinfo.py` (Python's hashlib) computes it.
fn info_hash_of(torrent: &Path) -> String {
    let o = run(Command::new("python3")
        .arg(common::swarm_lab().join("torrentinfo.py"))
        .arg(torrent)
        .arg("infohash"));
    assert!(o.status.success(), "torrentinfo.py: {}", text(&o.stderr));
    text(&o.stdout).trim().to_string()
}

/// `pow torrent create DATA -o STORE/NAME` with the lab tracker, 256 KiB pieces.
fn create_torrent(data: &Path, out: &Path) {
    let o = run(pow()
        .args(["torrent", "create"])
        .arg(data)
        .arg("-o")
        .arg(out)
        .args(["--tracker", TRACKER, "--piece-length", &PIECE.to_string()]));
    assert!(o.status.success(), "torrent create: {}", text(&o.stderr));
}

/// A fresh `.pow` with one ConnectomeCSVDataSource saved from TOML.
fn project(work: &Path, tag: &str, fields: &str) -> PathBuf {
    let dir = work.join(format!("pow-{tag}"));
    let o = run(pow().arg("--pow-dir").arg(&dir).arg("init"));
    assert!(o.status.success(), "init: {}", text(&o.stderr));
    let defs = work.join(format!("{tag}.toml"));
    std::fs::write(
        &defs,
        format!(
            "[[source]]\ntype = \"ConnectomeCSVDataSource\"\nkey = \"{tag}\"\n\
             comment = \"Merged nuclei, stained worm\"\n{fields}"
        ),
    )
    .unwrap();
    let o = run(pow().arg("--pow-dir").arg(&dir).arg("save").arg(&defs));
    assert!(o.status.success(), "save: {}", text(&o.stderr));
    dir
}

fn load(pow_dir: &Path, id: &str, extra: &[&str]) -> Output {
    run(&mut load_command(pow_dir, id, extra))
}

fn load_command(pow_dir: &Path, id: &str, extra: &[&str]) -> Command {
    let mut command = pow();
    command
        .arg("--pow-dir")
        .arg(pow_dir)
        .args(["source", "load", id, "--json", "--bind", "127.0.0.1"])
        .args(["--port", LOAD_PORT])
        .args(extra);
    command
}

fn json_of(out: &Output) -> serde_json::Value {
    let stdout = text(&out.stdout);
    let line = stdout.lines().last().unwrap_or("null");
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {stdout:?} {}", text(&out.stderr)))
}

fn check<'a>(json: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    json["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check {name} in {json}"))
}

/// Asserts that each named check passed.
fn assert_passed(json: &serde_json::Value, names: &[&str]) {
    for name in names {
        assert_eq!(check(json, name)["outcome"], "passed", "{name}: {json}");
    }
}

/// `pow publish PATH --no-seed` as ConnectomeCSVDataSource `key` into `store`: the torrent's
/// file name there.
fn publish_unseeded(pow_dir: &Path, path: &Path, key: &str, store: &Path) -> String {
    let o = run(pow()
        .arg("--pow-dir")
        .arg(pow_dir)
        .arg("publish")
        .arg(path)
        .args(["--type", "ConnectomeCSVDataSource", "--key", key])
        .args(["--no-seed", "--json", "--torrent-store"])
        .arg(store));
    assert!(o.status.success(), "publish {key}: {}", text(&o.stderr));
    json_of(&o)["torrent_file_name"]
        .as_str()
        .unwrap()
        .to_string()
}

/// `python3 -m http.server` on a free loopback port, killed when dropped.
struct HttpStore {
    child: Child,
    url: String,
}

impl HttpStore {
    fn start(dir: &Path) -> HttpStore {
        let port = free_port();
        let mut command = Command::new("python3");
        command
            .args([
                "-m",
                "http.server",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
            ])
            .arg("--directory")
            .arg(dir);
        HttpStore::spawn(command, port)
    }

    /// A Python `BaseHTTPRequestHandler` subclass body `handler` (class `H`), serving.
    fn scripted(handler: &str) -> HttpStore {
        let port = free_port();
        let script = format!(
            "import http.server\n{handler}\n\
             http.server.HTTPServer(('127.0.0.1', {port}), H).serve_forever()\n"
        );
        let mut command = Command::new("python3");
        command.arg("-c").arg(script);
        HttpStore::spawn(command, port)
    }

    fn spawn(mut command: Command, port: u16) -> HttpStore {
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "http.server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        HttpStore {
            child,
            url: format!("http://127.0.0.1:{port}"),
        }
    }
}

impl Drop for HttpStore {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A dataset as a researcher published it: a zip of `mib` MiB at `work/seed/NAME`, and its
/// torrent (256 KiB pieces, the lab tracker) named `<md5>.torrent` in the store `work/store`.
struct Dataset {
    seed_dir: PathBuf,
    zip: PathBuf,
    md5: String,
    store: PathBuf,
    torrent_name: String,
    torrent: PathBuf,
}

impl Dataset {
    /// A data source's fields naming this torrent and its MD5.
    fn fields(&self) -> String {
        format!(
            "torrent_file_name = \"{}\"\nmd5 = \"{}\"\n",
            self.torrent_name, self.md5
        )
    }
}

fn dataset(work: &Path, name: &str, mib: u64, seed: u64) -> Dataset {
    let seed_dir = work.join("seed");
    std::fs::create_dir_all(&seed_dir).unwrap();
    let zip = seed_dir.join(name);
    make_zip(&zip, mib, seed);
    let md5 = md5_hex(&zip);
    let store = work.join("store");
    std::fs::create_dir_all(&store).unwrap();
    let torrent_name = format!("{md5}.torrent");
    let torrent = store.join(&torrent_name);
    create_torrent(&zip, &torrent);
    Dataset {
        seed_dir,
        zip,
        md5,
        store,
        torrent_name,
        torrent,
    }
}

/// `pow seed TORRENT --data DIR` on a free loopback port, once it accepts connections.
fn pow_seed(torrent: &Path, data_dir: &Path) -> (Child, u16) {
    pow_seed_with(torrent, data_dir, &[])
}

/// [`pow_seed`] with more options.
fn pow_seed_with(torrent: &Path, data_dir: &Path, extra: &[&str]) -> (Child, u16) {
    let port = free_port();
    let child = pow()
        .arg("seed")
        .arg(torrent)
        .arg("--data")
        .arg(data_dir)
        .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "pow seed did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    (child, port)
}

/// A `pow source load` running in the background, on the lab's port, that reports each
/// piece it verifies (the engine's `POW_TRACE_VERIFIED` file; a download allocates the
/// content file in full at the first write, so its size says nothing). Stderr is piped.
struct TracedLoad(Child, PathBuf);

fn traced_load(pow_dir: &Path, id: &str, extra: &[&str]) -> TracedLoad {
    let trace = pow_dir.with_extension("trace");
    let child = pow()
        .arg("--pow-dir")
        .arg(pow_dir)
        .args([
            "source",
            "load",
            id,
            "--bind",
            "127.0.0.1",
            "--port",
            LOAD_PORT,
        ])
        .args(extra)
        .env("POW_TRACE_VERIFIED", &trace)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    TracedLoad(child, trace)
}

impl TracedLoad {
    fn kill(mut self) {
        self.0.kill().unwrap();
        self.0.wait().unwrap();
    }

    /// Waits until `pieces` are verified; the load must still be running.
    fn wait_verified(&mut self, pieces: usize) {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let verified = std::fs::read_to_string(&self.1)
                .map(|t| t.lines().filter(|l| l.starts_with("verified ")).count())
                .unwrap_or(0);
            if verified >= pieces {
                return;
            }
            assert!(Instant::now() < deadline, "load stuck at {verified} pieces");
            assert!(self.0.try_wait().unwrap().is_none(), "the load ended early");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn seed_with_libtorrent(lab: &Lab, torrent: &Path, data_dir: &Path) {
    let (ok, _, err) = lab.script(
        "seed.sh",
        &[
            "libtorrent",
            torrent.to_str().unwrap(),
            data_dir.to_str().unwrap(),
            "--timeout",
            "600",
        ],
    );
    assert!(ok, "seed.sh libtorrent: {err}");
}

/// Acceptance 1 and 4: directory store and HTTP store, verified file in the base dir, the
/// graph records it, `--json` has directory, info-hash, bytes and every check; a second load
/// re-verifies without network.
#[test]
fn loads_a_zip_seeded_by_libtorrent_from_directory_and_http_stores() {
    let lab = Lab::new("loader");
    let work = lab.work.path();
    let Dataset {
        seed_dir,
        zip,
        md5,
        store,
        torrent_name,
        torrent,
    } = dataset(work, "Merged_Nuclei_Stained_Worm.zip", 24, 1);
    let sha256 = sha256_hex(&zip);
    seed_with_libtorrent(&lab, &torrent, &seed_dir);

    let fields = format!(
        "torrent_file_name = \"{torrent_name}\"\nfile_name = \"Merged_Nuclei_Stained_Worm.zip\"\n\
         md5 = \"{md5}\"\nsha256 = \"{sha256}\"\n"
    );
    let id = "ConnectomeCSVDataSource:nuclei";

    // Directory store.
    let pow_dir = project(work, "nuclei", &fields);
    let started = Instant::now();
    let out = load(&pow_dir, id, &["--torrent-store", store.to_str().unwrap()]);
    assert!(out.status.success(), "load: {}", text(&out.stderr));
    let json = json_of(&out);
    let directory = PathBuf::from(json["directory"].as_str().unwrap());
    let expected_dir = pow_dir
        .join("data_source_data/BitTorrentDataSourceDirLoader/nuclei")
        .canonicalize()
        .unwrap();
    assert_eq!(directory.canonicalize().unwrap(), expected_dir);
    let loaded = directory.join("Merged_Nuclei_Stained_Worm.zip");
    common::same_bytes(&zip, &loaded).unwrap();
    assert_eq!(json["bytes"], std::fs::metadata(&zip).unwrap().len());
    assert_eq!(json["info_hash"].as_str().unwrap().len(), 40);
    assert_eq!(json["network"], true);
    assert_passed(
        &json,
        &[
            "sha1-pieces",
            "md5-torrent-name",
            "md5-field",
            "sha256-field",
            "file-name",
        ],
    );
    println!(
        "directory store: {} bytes in {:.2} s (transfer {:.2} s, MD5+SHA-256 left after it {:.3} s), checks: {}",
        json["bytes"],
        started.elapsed().as_secs_f64(),
        json["transfer_seconds"].as_f64().unwrap(),
        json["digest_seconds"].as_f64().unwrap(),
        json["checks"]
    );
    assert!(
        pow_dir.join("torrents").join(&torrent_name).is_file(),
        "torrent cached"
    );

    // The graph records where the data is and its info-hash.
    let iri = "http://openworm.org/entities/ConnectomeCSVDataSource/nuclei";
    let query = format!(
        "SELECT ?dir ?hash WHERE {{ GRAPH <urn:x-local:loader-state> {{ <{iri}> <urn:x-pow:loader#localDirectory> ?dir ; <urn:x-pow:loader#infoHash> ?hash }} }}"
    );
    let o = run(pow()
        .arg("--pow-dir")
        .arg(&pow_dir)
        .args(["source", "query", &query]));
    assert!(o.status.success(), "{}", text(&o.stderr));
    let rows = text(&o.stdout);
    assert!(rows.contains(json["info_hash"].as_str().unwrap()), "{rows}");
    assert!(rows.contains(directory.to_str().unwrap()), "{rows}");
    // ... and keeps it out of exports (it is about this machine).
    let o = run(pow().arg("--pow-dir").arg(&pow_dir).arg("export"));
    assert!(!text(&o.stdout).contains("loader-state"));

    // Second load: re-verified from disk, no network, the seed untouched.
    let out = load(&pow_dir, id, &["--torrent-store", "/nonexistent-store"]);
    assert!(out.status.success(), "second load: {}", text(&out.stderr));
    let again = json_of(&out);
    assert_eq!(again["network"], false);
    assert_eq!(again["torrent_from"], "cache");
    assert_eq!(again["pieces_already_on_disk"], again["pieces_total"]);
    println!(
        "second load: no network, {} pieces re-verified in {:.2} s",
        again["pieces_total"],
        again["seconds"].as_f64().unwrap()
    );

    // `pow source verify` runs the checks alone.
    let o = run(pow()
        .arg("--pow-dir")
        .arg(&pow_dir)
        .args(["source", "verify", id, "--json"]));
    assert!(o.status.success(), "verify: {}", text(&o.stderr));
    // ... and a --base-dir that does not exist is an error; it is not made.
    let typo = work.join("no-such-dir");
    let o = pow()
        .arg("--pow-dir")
        .arg(&pow_dir)
        .args(["source", "verify", id, "--base-dir"])
        .arg(&typo)
        .output()
        .unwrap();
    println!(
        "verify --base-dir {}: {}",
        typo.display(),
        text(&o.stderr).trim()
    );
    assert!(!o.status.success() && text(&o.stderr).contains("no directory"));
    assert!(!typo.exists(), "verify made the directory");

    // HTTP store, fresh project, plain text output prints the directory.
    std::fs::write(
        store.join("index.json"),
        format!(
            r#"[{{"name": "{torrent_name}", "description": "Merged nuclei", "info_hash": "{}", "size": {}}}]"#,
            json["info_hash"].as_str().unwrap(),
            json["bytes"]
        ),
    )
    .unwrap();
    let http = HttpStore::start(&store);
    let o = run(pow().args(["store", "list", "--torrent-store", &http.url]));
    assert!(o.status.success(), "store list: {}", text(&o.stderr));
    assert!(
        text(&o.stdout).contains(&torrent_name),
        "{}",
        text(&o.stdout)
    );
    let pow_http = project(work, "nuclei_http", &fields);
    let id_http = "ConnectomeCSVDataSource:nuclei_http";
    let o = run(pow()
        .arg("--pow-dir")
        .arg(&pow_http)
        .args([
            "source",
            "load",
            id_http,
            "--bind",
            "127.0.0.1",
            "--port",
            LOAD_PORT,
        ])
        .args(["--torrent-store", &http.url]));
    assert!(o.status.success(), "HTTP load: {}", text(&o.stderr));
    let printed = PathBuf::from(text(&o.stdout).trim());
    common::same_bytes(&zip, &printed.join("Merged_Nuclei_Stained_Worm.zip")).unwrap();
    println!("HTTP store {}: loaded into {}", http.url, printed.display());
}

/// A record whose `md5` and `torrent_file_name` name different content (a save that changed
/// only the torrent's name keeps the old md5) is refused before its torrent is fetched: the
/// load downloaded everything and only then failed its md5 check.
#[test]
fn a_record_whose_md5_and_torrent_name_disagree_is_refused_before_anything_is_fetched() {
    let work = TempDir::new("md5-stale");
    let project = common::project_with(
        &work.path().join("pow"),
        "[[source]]\n\
         type = \"LocalFileDataSource\"\n\
         key = \"stale\"\n\
         torrent_file_name = \"0123456789abcdef0123456789abcdef.torrent\"\n\
         md5 = \"fedcba9876543210fedcba9876543210\"\n",
    );
    let o = run(pow()
        .arg("--pow-dir")
        .arg(&project)
        .args([
            "source",
            "load",
            "LocalFileDataSource:stale",
            "--torrent-store",
        ])
        .arg(work.path().join("store-never-asked")));
    let stderr = text(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(
            "its md5 fedcba9876543210fedcba9876543210 and its torrent_file_name \
             0123456789abcdef0123456789abcdef.torrent name different content"
        ),
        "{stderr}"
    );
}

/// Acceptance 2: content that is not what the torrent's name says, a torrent missing from the
/// store, a store that is down, and a source without a torrent.
#[test]
fn tampered_content_missing_torrent_and_dead_store_fail_clearly() {
    let lab = Lab::new("loader-bad");
    let work = lab.work.path();
    let real = work.join("real.zip");
    make_zip(&real, 4, 2);
    let claimed_md5 = md5_hex(&real);
    // The seeder's data differs: a valid torrent of other bytes, named by the real MD5.
    let seed_dir = work.join("seed");
    std::fs::create_dir_all(&seed_dir).unwrap();
    let other = seed_dir.join("dataset.zip");
    make_zip(&other, 4, 3);
    let actual_md5 = md5_hex(&other);
    let store = work.join("store");
    std::fs::create_dir_all(&store).unwrap();
    let torrent_name = format!("{claimed_md5}.torrent");
    create_torrent(&other, &store.join(&torrent_name));
    seed_with_libtorrent(&lab, &store.join(&torrent_name), &seed_dir);

    let pow_dir = project(
        work,
        "tampered",
        &format!("torrent_file_name = \"{torrent_name}\"\n"),
    );
    let s = store.to_str().unwrap();
    let out = load(
        &pow_dir,
        "ConnectomeCSVDataSource:tampered",
        &["--torrent-store", s],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    let expected = format!("content MD5 {actual_md5} does not match torrent name {torrent_name}");
    assert!(stderr.contains(&expected), "{stderr}");
    let json = json_of(&out);
    assert_eq!(json["ok"], false);
    assert_eq!(check(&json, "sha1-pieces")["outcome"], "passed");
    assert_eq!(check(&json, "md5-torrent-name")["outcome"], "failed");
    // Verified pieces are kept on disk.
    let kept = PathBuf::from(json["content"].as_str().unwrap());
    common::same_bytes(&other, &kept).unwrap();
    println!("tampered: {}", stderr.trim());
    // The wrong torrent is not kept in the cache: the store put right (a torrent of the real
    // bytes under that name), the next load uses the store's. Every rerun used the cached
    // one, and failed the same way.
    assert!(
        stderr.contains(&format!("{torrent_name} dropped from the torrent cache")),
        "{stderr}"
    );
    let tampered = std::fs::read(store.join(&torrent_name)).unwrap();
    std::fs::remove_file(store.join(&torrent_name)).unwrap();
    create_torrent(&real, &store.join(&torrent_name));
    // Nobody seeds the real bytes here: the rerun stalls, with the store's torrent cached.
    let out = load(
        &pow_dir,
        "ConnectomeCSVDataSource:tampered",
        &["--torrent-store", s, "--stall-timeout", "1"],
    );
    let cached = std::fs::read(pow_dir.join("torrents").join(&torrent_name));
    assert!(
        cached.ok() == std::fs::read(store.join(&torrent_name)).ok(),
        "the rerun did not take the store's torrent: {}",
        text(&out.stderr)
    );
    // The store as it was, for the cases below.
    std::fs::write(store.join(&torrent_name), tampered).unwrap();

    // A fresh project whose source `tag` has `fields`, loaded with `extra`: it must fail with
    // exit 1; its stderr.
    let failed_load = |tag: &str, fields: &str, extra: &[&str]| -> String {
        let pow_dir = project(work, tag, fields);
        let out = load(&pow_dir, &format!("ConnectomeCSVDataSource:{tag}"), extra);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        println!("{tag}: {}", stderr.trim());
        stderr
    };

    // Missing torrent: the error names the store and the file.
    let missing = "0123456789abcdef0123456789abcdef.torrent";
    let missing_field = format!("torrent_file_name = \"{missing}\"\n");
    let stderr = failed_load("missing", &missing_field, &["--torrent-store", s]);
    assert!(stderr.contains(missing) && stderr.contains(s), "{stderr}");

    // A store that is down.
    let dead = format!("http://127.0.0.1:{}", free_port());
    let stderr = failed_load("store-down", &missing_field, &["--torrent-store", &dead]);
    assert!(
        stderr.contains(&dead) && stderr.contains("cannot connect"),
        "{stderr}"
    );

    // A "torrent" in a directory store that is a FIFO, or a link to a device: refused at once,
    // not read (the FIFO hung the load, and with it every command waiting for the project's
    // store, for good; /dev/zero would have been read until memory ran out).
    let odd_store = work.join("odd-store");
    std::fs::create_dir_all(&odd_store).unwrap();
    let (fifo, zero) = (
        "00000000000000000000000000000001.torrent",
        "00000000000000000000000000000002.torrent",
    );
    assert!(run(Command::new("mkfifo").arg(odd_store.join(fifo)))
        .status
        .success());
    std::os::unix::fs::symlink("/dev/zero", odd_store.join(zero)).unwrap();
    for (tag, name) in [("fifo", fifo), ("zero", zero)] {
        let started = Instant::now();
        let field = format!("torrent_file_name = \"{name}\"\n");
        let stderr = failed_load(
            tag,
            &field,
            &["--torrent-store", odd_store.to_str().unwrap()],
        );
        assert!(
            stderr.contains(&format!("{name} is not a regular file")),
            "{stderr}"
        );
        assert!(started.elapsed() < Duration::from_secs(30));
    }

    // No torrent_file_name at all.
    let stderr = failed_load("plain", "md5 = \"0123456789abcdef0123456789abcdef\"\n", &[]);
    assert!(stderr.contains("has no torrent_file_name"), "{stderr}");

    // The record names the info-hash of a torrent of the real bytes: the store's torrent (of
    // other bytes, under the real MD5's name) is refused before anything is downloaded.
    let real_torrent = work.join("real.torrent");
    create_torrent(&real, &real_torrent);
    let (real_hash, store_hash) = (
        info_hash_of(&real_torrent),
        info_hash_of(&store.join(&torrent_name)),
    );
    let stderr = failed_load(
        "named",
        &format!("torrent_file_name = \"{torrent_name}\"\ninfo_hash = \"{real_hash}\"\n"),
        &["--torrent-store", s],
    );
    let expected = format!(
        "has info-hash {store_hash}, but the record's info_hash is {real_hash}; nothing \
         downloaded"
    );
    assert!(stderr.contains(&expected), "{stderr}");
    let base_dir = work.join("pow-named/data_source_data/BitTorrentDataSourceDirLoader/named");
    assert!(!base_dir.exists(), "nothing written");
}

/// A load (or a `source verify`) whose HTTP torrent store takes the request and never answers
/// (it times out after 30 s) lets go of the project's graph store while it waits: `pow source
/// list` and `pow save` run meanwhile. They used to wait for the load (the store opens for one
/// process at a time), and a second load, or a third command after it, gave up after a minute
/// ("is in use").
#[test]
fn a_torrent_store_that_never_answers_holds_no_other_command_up() {
    let work = TempDir::new("silent-store");
    let work = work.path();
    // Connections complete in the kernel's backlog; nothing ever reads or answers them.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    silent.set_nonblocking(true).unwrap();
    let store = format!("http://127.0.0.1:{}", silent.local_addr().unwrap().port());
    let name = "0123456789abcdef0123456789abcdef.torrent";
    let pow_dir = project(work, "silent", &format!("torrent_file_name = \"{name}\"\n"));
    let id = "ConnectomeCSVDataSource:silent";
    let verify = {
        let mut command = pow();
        command.arg("--pow-dir").arg(&pow_dir).args([
            "source",
            "verify",
            id,
            "--torrent-store",
            &store,
        ]);
        command
    };
    let commands = [
        (
            "load",
            load_command(&pow_dir, id, &["--torrent-store", &store]),
        ),
        ("verify", verify),
    ];
    for (round, (what, mut command)) in commands.into_iter().enumerate() {
        let mut waiting = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Its request is in: it is waiting on the store.
        let deadline = Instant::now() + Duration::from_secs(30);
        let _request = loop {
            match silent.accept() {
                Ok((connection, _)) => break connection,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    assert!(
                        Instant::now() < deadline,
                        "the {what} never asked the store"
                    );
                    assert!(waiting.try_wait().unwrap().is_none(), "the {what} ended");
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => panic!("{e}"),
            }
        };
        let asked = Instant::now();
        let listed = run(pow()
            .arg("--pow-dir")
            .arg(&pow_dir)
            .args(["source", "list"]));
        assert!(listed.status.success(), "list: {}", text(&listed.stderr));
        assert!(
            text(&listed.stdout).contains("silent"),
            "{}",
            text(&listed.stdout)
        );
        let defs = work.join(format!("more-{round}.toml"));
        std::fs::write(
            &defs,
            format!("[[source]]\ntype = \"ConnectomeCSVDataSource\"\nkey = \"more{round}\"\n"),
        )
        .unwrap();
        let saved = run(pow().arg("--pow-dir").arg(&pow_dir).arg("save").arg(&defs));
        assert!(saved.status.success(), "save: {}", text(&saved.stderr));
        let meanwhile = asked.elapsed();
        let still_waiting = waiting.try_wait().unwrap().is_none();
        let _ = waiting.kill();
        let _ = waiting.wait();
        println!("list and save ran in {meanwhile:?} while the {what} waited on its store");
        assert!(
            still_waiting,
            "list and save waited {meanwhile:?}, until the {what} gave up on its store"
        );
    }
}

/// A fresh project in `work` that publishes a small CSV as ConnectomeCSVDataSource `key` to
/// `store`, with `--no-seed` and `extra`: the project, the CSV, and what publish printed.
fn publish_small_csv(
    work: &Path,
    key: &str,
    store: &str,
    extra: &[&str],
) -> (PathBuf, PathBuf, Output) {
    let data = work.join("v1.csv");
    std::fs::write(&data, "pre,post\nAVAL,AVAR\n").unwrap();
    let pow_dir = work.join("pow");
    let init = run(pow().arg("--pow-dir").arg(&pow_dir).arg("init"));
    assert!(init.status.success(), "init: {}", text(&init.stderr));
    let o = run(pow()
        .arg("--pow-dir")
        .arg(&pow_dir)
        .arg("publish")
        .arg(&data)
        .args(["--type", "ConnectomeCSVDataSource", "--key", key])
        .args(["--no-seed", "--torrent-store", store])
        .args(extra));
    (pow_dir, data, o)
}

/// A record `pow publish` would refuse (an unknown `--type` or `--set` field, a malformed value,
/// a `csv_file_name` other than the file) is refused before the content is hashed and before
/// its torrent is stored: it used to be found only after the hashing (an hour for a large
/// dataset), with the torrent left in the store and no record naming it.
#[test]
fn a_record_publish_would_refuse_is_refused_before_anything_is_stored() {
    let work = TempDir::new("publish-refused");
    let store = work.path().join("store");
    let store_arg = store.to_str().unwrap();
    let (pow_dir, data, o) = publish_small_csv(
        work.path(),
        "refused",
        store_arg,
        &["--set", "csv_headr=pre,post"],
    );
    let refused: [(&[&str], &str); 4] = [
        (
            &["--set", "csv_headr=pre,post"],
            "unknown field \"csv_headr\" for ConnectomeCSVDataSource",
        ),
        (
            &["--type", "ConnectomeCsvDataSource"],
            "unknown class \"ConnectomeCsvDataSource\"",
        ),
        (
            &["--set", "csv_file_name=other.csv"],
            "csv_file_name gives \"other.csv\" but file_name is \"v1.csv\"",
        ),
        (&["--set", "sha512=xyz"], "sha512"),
    ];
    for (i, (extra, expected)) in refused.into_iter().enumerate() {
        let o = match i {
            0 => o.clone(),
            _ => run(pow()
                .arg("--pow-dir")
                .arg(&pow_dir)
                .arg("publish")
                .arg(&data)
                .args([
                    "--key",
                    "refused",
                    "--no-seed",
                    "--torrent-store",
                    store_arg,
                ])
                .args(if extra[0] == "--type" {
                    &[][..]
                } else {
                    &["--type", "ConnectomeCSVDataSource"]
                })
                .args(extra)),
        };
        let stderr = text(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{extra:?}: {stderr}");
        assert!(stderr.contains(expected), "{extra:?}: {stderr}");
        assert!(!stderr.contains("hashing"), "{extra:?} hashed: {stderr}");
        assert!(!store.exists(), "{extra:?} stored a torrent: {stderr}");
        let list = run(pow()
            .arg("--pow-dir")
            .arg(&pow_dir)
            .args(["source", "list"]));
        assert_eq!(text(&list.stdout), "", "{extra:?} recorded a source");
    }
    let o = run(pow()
        .arg("--pow-dir")
        .arg(&pow_dir)
        .arg("publish")
        .arg(&data)
        .args([
            "--type",
            "ConnectomeCSVDataSource",
            "--set",
            "csv_header=pre,post",
        ])
        .args(["--no-seed", "--torrent-store", store_arg]));
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(std::fs::read_dir(&store).unwrap().count(), 1);
}

/// `pow publish` to an HTTP store asks it to store the torrent and nothing more: the record of
/// the content the publisher holds is planned from the torrent it stored. It used to fetch the
/// torrent back with the project's graph store open, so a store that took the PUT and then
/// stalled held every other pow command up for its 30 s timeout, and the publish failed.
#[test]
fn a_publish_does_not_fetch_back_the_torrent_it_stored() {
    let work = TempDir::new("put-only");
    let store = HttpStore::scripted(
        "import time\n\
         class H(http.server.BaseHTTPRequestHandler):\n\
         \x20   def do_PUT(self):\n\
         \x20       self.rfile.read(int(self.headers['Content-Length']))\n\
         \x20       self.send_response(201); self.send_header('Content-Length', '0')\n\
         \x20       self.end_headers()\n\
         \x20   def do_GET(self):\n\
         \x20       time.sleep(120)\n",
    );
    let (pow_dir, data, o) = publish_small_csv(work.path(), "put", &store.url, &["--json"]);
    let stderr = text(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    let summary = json_of(&o);
    assert_eq!(summary["stored"], "written", "{summary}");
    let shown = run(pow().arg("--pow-dir").arg(&pow_dir).args([
        "source",
        "show",
        "ConnectomeCSVDataSource:put",
    ]));
    assert!(shown.status.success(), "{}", text(&shown.stderr));
    let md5 = md5_hex(&data);
    assert!(
        text(&shown.stdout).contains(&md5),
        "{}",
        text(&shown.stdout)
    );
}

/// A store that answers a PUT with `303 See Other` (to an HTML page) has not stored the
/// torrent: `publish` fails naming the redirect and records nothing. The redirect used to be
/// followed as a GET whose 200 read as "already stored", and publish then failed on the page
/// with only "bencode: unexpected byte '<' at byte 0".
#[test]
fn a_store_that_redirects_a_put_has_not_stored_it() {
    let work = TempDir::new("put-redirect");
    let store = HttpStore::scripted(
        "class H(http.server.BaseHTTPRequestHandler):\n\
         \x20   def do_PUT(self):\n\
         \x20       self.rfile.read(int(self.headers['Content-Length']))\n\
         \x20       self.send_response(303); self.send_header('Location', '/see/x')\n\
         \x20       self.send_header('Content-Length', '0'); self.end_headers()\n\
         \x20   def do_GET(self):\n\
         \x20       body = b'<html>signed in?</html>'\n\
         \x20       self.send_response(200); self.send_header('Content-Length', str(len(body)))\n\
         \x20       self.end_headers(); self.wfile.write(body)\n",
    );
    let (pow_dir, data, o) = publish_small_csv(work.path(), "redirected", &store.url, &[]);
    let stderr = text(&o.stderr);
    println!("{}", stderr.trim());
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("HTTP 303") && stderr.contains("redirects to /see/x"),
        "{stderr}"
    );
    let shown = run(pow().arg("--pow-dir").arg(&pow_dir).args([
        "source",
        "show",
        "ConnectomeCSVDataSource:redirected",
    ]));
    assert!(!shown.status.success(), "recorded: {}", text(&shown.stdout));

    // A 307 (method and body kept) to the same host is followed: stored there, recorded.
    let moved = HttpStore::scripted(
        "class H(http.server.BaseHTTPRequestHandler):\n\
         \x20   kept = {}\n\
         \x20   def reply(self, code, body=b'', location=None):\n\
         \x20       self.send_response(code)\n\
         \x20       if location: self.send_header('Location', location)\n\
         \x20       self.send_header('Content-Length', str(len(body))); self.end_headers()\n\
         \x20       self.wfile.write(body)\n\
         \x20   def do_PUT(self):\n\
         \x20       body = self.rfile.read(int(self.headers['Content-Length']))\n\
         \x20       if self.path.startswith('/real/'):\n\
         \x20           H.kept[self.path] = body; self.reply(201)\n\
         \x20       else: self.reply(307, location='/real' + self.path)\n\
         \x20   def do_GET(self):\n\
         \x20       path = self.path if self.path.startswith('/real/') else '/real' + self.path\n\
         \x20       if path in H.kept: self.reply(200, H.kept[path])\n\
         \x20       else: self.reply(404)\n",
    );
    let o = run(pow()
        .arg("--pow-dir")
        .arg(&pow_dir)
        .arg("publish")
        .arg(&data)
        .args(["--type", "ConnectomeCSVDataSource", "--key", "moved"])
        .args(["--no-seed", "--torrent-store", &moved.url]));
    assert!(
        o.status.success(),
        "publish through a 307: {}",
        text(&o.stderr)
    );
    let shown = run(pow().arg("--pow-dir").arg(&pow_dir).args([
        "source",
        "show",
        "ConnectomeCSVDataSource:moved",
    ]));
    assert!(
        shown.status.success(),
        "not recorded: {}",
        text(&shown.stderr)
    );
}

/// Acceptance 3: a load killed (-9) half way, then run again, fetches only what was missing.
///
/// To stop the first load at a known point without timing games, its only peer is a pow seed
/// whose copy has the second half of the pieces corrupted: it serves only the good half. The
/// first load is killed once that half is on disk; the second run gets the rest from a
/// libtorrent seed with the right data.
#[test]
fn interrupted_load_resumes_without_refetching_verified_pieces() {
    let lab = Lab::new("loader-resume");
    let work = lab.work.path();
    let Dataset {
        seed_dir,
        zip,
        md5,
        store,
        torrent_name,
        torrent,
    } = dataset(work, "microscopy.zip", 32, 4);
    let size = std::fs::metadata(&zip).unwrap().len();
    let pieces = size.div_ceil(PIECE);
    let good = pieces / 2;

    // Half-good copy for the pow seed.
    let half_dir = TempDir::new("loader-half");
    let half = half_dir.path().join("microscopy.zip");
    let mut bytes = std::fs::read(&zip).unwrap();
    for piece in good..pieces {
        bytes[(piece * PIECE) as usize] ^= 0xff;
    }
    std::fs::write(&half, &bytes).unwrap();
    let (mut half_seed, seed_port) = pow_seed(&torrent, half_dir.path());

    let pow_dir = project(
        work,
        "micro",
        &format!("torrent_file_name = \"{torrent_name}\"\nmd5 = \"{md5}\"\n"),
    );
    let id = "ConnectomeCSVDataSource:micro";
    let mut first = traced_load(
        &pow_dir,
        id,
        &[
            "--torrent-store",
            store.to_str().unwrap(),
            "--peer",
            &format!("127.0.0.1:{seed_port}"),
        ],
    );
    let content =
        pow_dir.join("data_source_data/BitTorrentDataSourceDirLoader/micro/microscopy.zip");
    first.wait_verified(good as usize);
    first.kill();
    half_seed.kill().unwrap();
    half_seed.wait().unwrap();

    seed_with_libtorrent(&lab, &torrent, &seed_dir);
    let out = load(&pow_dir, id, &["--torrent-store", store.to_str().unwrap()]);
    assert!(out.status.success(), "second load: {}", text(&out.stderr));
    let json = json_of(&out);
    common::same_bytes(&zip, &content).unwrap();
    let on_disk = json["pieces_already_on_disk"].as_u64().unwrap();
    let fetched = json["downloaded"].as_u64().unwrap();
    println!(
        "killed after {good} of {pieces} pieces; rerun found {on_disk} on disk, fetched {fetched} of {size} bytes ({:.0}%), checks {}",
        100.0 * fetched as f64 / size as f64,
        json["checks"]
    );
    assert_eq!(on_disk, good, "every verified piece survives the kill");
    let missing = size - good * PIECE;
    assert!(
        fetched <= missing + 4 * PIECE,
        "fetched {fetched}, only {missing} were missing"
    );
}

/// The only seed goes away in the middle of a load: with `--stall-timeout 2` the load ends by
/// itself 2 s after the last data, exit 1, saying how far it got; the verified pieces stay,
/// and a rerun with a seed back finds them on disk and fetches only the rest.
#[test]
fn a_load_whose_seed_goes_away_gives_up_after_the_stall_timeout_and_a_rerun_resumes() {
    // The lab's lock (the load's peer port is a lab port) and its tracker (the torrent's).
    let lab = Lab::new("loader-stall");
    let work = lab.work.path();
    let d = dataset(work, "tracks.zip", 16, 9);
    let pieces = std::fs::metadata(&d.zip).unwrap().len().div_ceil(PIECE);
    let port = free_port();
    let slow_seed = common::pow_seed(
        &d.torrent,
        &d.seed_dir,
        port,
        &["--max-upload-rate", "2M"],
        Stdio::null(),
    );

    let pow_dir = project(work, "stall", &d.fields());
    let id = "ConnectomeCSVDataSource:stall";
    let mut first = traced_load(
        &pow_dir,
        id,
        &[
            "--torrent-store",
            d.store.to_str().unwrap(),
            "--peer",
            &format!("127.0.0.1:{port}"),
            "--stall-timeout",
            "2",
        ],
    );
    first.wait_verified(8);
    drop(slow_seed);
    let killed = Instant::now();
    let first = first.0.wait_with_output().unwrap();
    let gave_up_after = killed.elapsed();
    let stderr = text(&first.stderr);
    println!(
        "gave up {:.1} s after the seed was killed: {stderr}",
        gave_up_after.as_secs_f64()
    );
    assert_eq!(first.status.code(), Some(1), "{stderr}");
    assert!(
        gave_up_after >= Duration::from_secs(2) && gave_up_after < Duration::from_secs(10),
        "{gave_up_after:?}"
    );
    let said = stderr
        .lines()
        .find(|l| l.contains("no data for 2 s (connected to 0 peers); stopped with "))
        .unwrap_or_else(|| panic!("{stderr}"));
    let verified: u64 = said
        .split("stopped with ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!(
        said.contains(&format!("of {pieces} pieces verified (kept in ")),
        "{said}"
    );
    assert!((8..pieces).contains(&verified), "{said}");

    let (mut seed, seed_port) = pow_seed(&d.torrent, &d.seed_dir);
    let out = load(
        &pow_dir,
        id,
        &[
            "--torrent-store",
            d.store.to_str().unwrap(),
            "--peer",
            &format!("127.0.0.1:{seed_port}"),
            "--stall-timeout",
            "30",
        ],
    );
    assert!(out.status.success(), "rerun: {}", text(&out.stderr));
    let json = json_of(&out);
    assert_eq!(json["pieces_already_on_disk"], verified);
    assert_passed(&json, &["sha1-pieces", "md5-torrent-name", "md5-field"]);
    common::same_bytes(&d.zip, Path::new(json["content"].as_str().unwrap())).unwrap();
    seed.kill().unwrap();
    seed.wait().unwrap();
}

/// The torrent store does not have the torrent (here: an empty one), but the record names its
/// info-hash: the load fetches the torrent's info from the swarm (libtorrent's seed, found
/// through the lab tracker; BEP 9) and goes on. A record with an info-hash and no
/// torrent_file_name loads the same way; with no peer that has it, the load fails clearly.
#[test]
fn a_source_the_store_lacks_is_fetched_from_peers_by_its_info_hash() {
    let lab = Lab::new("loader-by-hash");
    let work = lab.work.path();
    let d = dataset(work, "cells.zip", 8, 11);
    seed_with_libtorrent(&lab, &d.torrent, &d.seed_dir);
    let info_hash = info_hash_of(&d.torrent);
    let empty = work.join("empty-store");
    std::fs::create_dir_all(&empty).unwrap();
    let by_hash = [
        "--torrent-store",
        empty.to_str().unwrap(),
        "--tracker",
        TRACKER,
    ];

    let named = project(
        work,
        "named",
        &format!("{}info_hash = \"{info_hash}\"\n", d.fields()),
    );
    let out = run(
        load_command(&named, "ConnectomeCSVDataSource:named", &by_hash).env("POW_LOG", "debug"),
    );
    assert!(out.status.success(), "load: {}", text(&out.stderr));
    let json = json_of(&out);
    assert_eq!(json["torrent_from"], "peers");
    // The content came over the connection the torrent's info came over.
    common::assert_metadata_connection_kept(&text(&out.stderr), "127.0.0.1:51103", "load");
    assert_passed(
        &json,
        &[
            "info-hash-field",
            "sha1-pieces",
            "md5-torrent-name",
            "md5-field",
        ],
    );
    common::same_bytes(&d.zip, Path::new(json["content"].as_str().unwrap())).unwrap();
    println!(
        "by info-hash, with its torrent_file_name: {}",
        json["checks"]
    );

    let hash_only = project(
        work,
        "hash-only",
        &format!("info_hash = \"{info_hash}\"\nmd5 = \"{}\"\n", d.md5),
    );
    let out = load(&hash_only, "ConnectomeCSVDataSource:hash-only", &by_hash);
    assert!(out.status.success(), "load: {}", text(&out.stderr));
    let json = json_of(&out);
    assert_eq!(
        json["torrent_file_name"],
        format!("{info_hash}.torrent").as_str()
    );
    assert_passed(&json, &["info-hash-field", "sha1-pieces", "md5-field"]);
    assert_eq!(check(&json, "md5-torrent-name")["outcome"], "skipped");
    common::same_bytes(&d.zip, Path::new(json["content"].as_str().unwrap())).unwrap();

    let nobody = project(
        work,
        "nobody",
        "info_hash = \"0123456789abcdef0123456789abcdef01234567\"\n",
    );
    let out = load(
        &nobody,
        "ConnectomeCSVDataSource:nobody",
        &[&by_hash[..], &["--metadata-timeout", "3"]].concat(),
    );
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    let nobody_hash = "0123456789abcdef0123456789abcdef01234567";
    let expected = format!(
        "has no {nobody_hash}.torrent, nor did peers give info-hash {nobody_hash}: no peer sent \
         the metadata within 3s"
    );
    assert!(stderr.contains(&expected), "{stderr}");
    println!("nobody has it: {}", stderr.trim());
}

/// `pow publish`: torrent named by the content MD5 into a directory store, the record in the
/// graph, seeding; aria2 (a real client) downloads it through the tracker and `pow source load`
/// in another project gets it from the store; publishing again changes nothing.
#[test]
fn publish_then_aria2_and_pow_load_fetch_it() {
    use std::io::BufRead;
    let lab = Lab::new("publish");
    let work = lab.work.path();
    let data_dir = work.join("data");
    std::fs::create_dir_all(&data_dir).unwrap();
    let zip = data_dir.join("Worm_Tracks.zip");
    make_zip(&zip, 16, 5);
    let md5 = md5_hex(&zip);
    let store = work.join("store");
    let publisher = work.join("pow-publisher");
    let o = run(pow().arg("--pow-dir").arg(&publisher).arg("init"));
    assert!(o.status.success(), "{}", text(&o.stderr));
    let publish = |extra: &[&str]| {
        let mut cmd = pow();
        cmd.arg("--pow-dir")
            .arg(&publisher)
            .arg("publish")
            .arg(&zip)
            .args(["--type", "ConnectomeCSVDataSource", "--key", "tracks"])
            .args(["--set", "description=Worm tracks, test upload"])
            .args([
                "--torrent-store",
                store.to_str().unwrap(),
                "--tracker",
                TRACKER,
            ])
            .arg("--json")
            .args(extra);
        // Where it seeds; `--no-seed` refuses the options of seeding.
        if !extra.contains(&"--no-seed") {
            cmd.args(["--bind", "127.0.0.1", "--port", "51105"]);
        }
        cmd
    };
    let mut seeding = publish(&[]).stdout(Stdio::piped()).spawn().unwrap();
    let mut first_line = String::new();
    std::io::BufReader::new(seeding.stdout.take().unwrap())
        .read_line(&mut first_line)
        .unwrap();
    let summary: serde_json::Value = serde_json::from_str(&first_line).unwrap();
    let torrent_name = format!("{md5}.torrent");
    assert_eq!(summary["torrent_file_name"], torrent_name.as_str());
    assert_eq!(summary["md5"], md5.as_str());
    assert_eq!(summary["sha256"], sha256_hex(&zip).as_str());
    assert_eq!(summary["stored"], "written");
    let torrent = store.join(&torrent_name);
    assert!(torrent.is_file());
    println!("published: {first_line}");

    // A real client gets it from the publisher's seed through the tracker.
    let out = work.join("aria2-out");
    let (ok, stdout, err) = lab.script(
        "leech.sh",
        &[
            "aria2",
            torrent.to_str().unwrap(),
            out.to_str().unwrap(),
            "--timeout",
            "120",
        ],
    );
    assert!(ok, "aria2 from pow publish: {stdout}\n{err}");
    common::same_bytes(&zip, &out.join("Worm_Tracks.zip")).unwrap();
    println!("aria2: {}", common::result_line(&stdout));

    // Another project loads the published record's torrent from the store.
    let info_hash = info_hash_of(&torrent);
    assert_eq!(summary["info_hash"], info_hash.as_str());
    let reader = project(
        work,
        "tracks",
        &format!(
            "torrent_file_name = \"{torrent_name}\"\nmd5 = \"{md5}\"\ninfo_hash = \"{info_hash}\"\n"
        ),
    );
    let o = load(
        &reader,
        "ConnectomeCSVDataSource:tracks",
        &["--torrent-store", store.to_str().unwrap()],
    );
    assert!(o.status.success(), "load: {}", text(&o.stderr));
    let json = json_of(&o);
    assert_passed(&json, &["info-hash-field", "md5-torrent-name", "md5-field"]);
    common::same_bytes(&zip, Path::new(json["content"].as_str().unwrap())).unwrap();
    let _ = Command::new("kill")
        .args(["-TERM", &seeding.id().to_string()])
        .status();
    seeding.wait().unwrap();

    // Publishing the same bytes again: same torrent, same graph.
    let export = || text(&run(pow().arg("--pow-dir").arg(&publisher).arg("export")).stdout);
    let before = export();
    let torrent_before = std::fs::read(&torrent).unwrap();
    let o = run(&mut publish(&["--no-seed"]));
    assert!(o.status.success(), "{}", text(&o.stderr));
    let again = json_of(&o);
    assert_eq!(again["stored"], "existing");
    assert_eq!(again["info_hash"], summary["info_hash"]);
    assert_eq!(export(), before, "graph unchanged");
    assert_eq!(std::fs::read(&torrent).unwrap(), torrent_before);
    assert!(before.contains(&md5) && before.contains("Worm tracks, test upload"));
    assert!(
        before.contains(&format!("<urn:x-pow:vocab#infoHash> \"{info_hash}\"")),
        "the record names its torrent: {before}"
    );
    println!(
        "second publish: stored={}, graph unchanged",
        again["stored"]
    );
}

/// libtorrent reads the torrent's files in its order; their bytes joined, MD5 and SHA-256 by
/// Python's hashlib. Prints "<md5> <sha256> <files>".
const LT_CONTENT_DIGESTS: &str = r#"
import sys, os, hashlib, libtorrent as lt
torrent, root = sys.argv[1], sys.argv[2]
files = lt.torrent_info(torrent).files()
md5, sha256, count = hashlib.md5(), hashlib.sha256(), 0
for i in range(files.num_files()):
    if files.file_flags(i) & lt.file_storage.flag_pad_file:
        continue
    with open(os.path.join(root, files.file_path(i)), 'rb') as f:
        data = f.read()
    md5.update(data); sha256.update(data); count += 1
print(md5.hexdigest(), sha256.hexdigest(), count)
"#;

/// `pow publish` of a directory: the torrent is named by the MD5 of its files' bytes in the
/// order the torrent lists them (digested while the pieces are hashed, before the torrent
/// exists), as libtorrent reads that order. The names sort differently as byte strings of
/// whole paths ("sub-notes" before "sub/") and of path components (`sub/` first, as
/// torrents list them); the files cross the digest's 1 MiB reads, and one is empty.
#[test]
fn publishing_a_directory_names_it_by_the_md5_of_its_files_in_torrent_order() {
    let work = TempDir::new("publish-dir");
    let data = work.path().join("cells");
    std::fs::create_dir_all(data.join("sub/deeper")).unwrap();
    let files: [(&str, usize); 6] = [
        ("sub-notes.txt", 300 * 1024 + 7),
        ("sub/deeper/z.csv", 1_600_000),
        ("sub/a.csv", 2_300_001),
        ("B.csv", 9),
        ("a.csv", 700_000),
        ("empty", 0),
    ];
    for (i, (name, len)) in files.iter().enumerate() {
        std::fs::write(data.join(name), common::pseudo_random_bytes(*len, i as u64)).unwrap();
    }
    let pow_dir = work.path().join("pow");
    assert!(run(pow().arg("--pow-dir").arg(&pow_dir).arg("init"))
        .status
        .success());
    let store = work.path().join("store");
    // Options only seeding uses are refused with --no-seed (they were ignored), before
    // anything is hashed or stored.
    for option in [
        &["--port", "7000"][..],
        &["--super-seed"],
        &["--max-upload-rate", "1M"],
    ] {
        let o = run(pow()
            .arg("--pow-dir")
            .arg(&pow_dir)
            .arg("publish")
            .arg(&data)
            .arg("--no-seed")
            .args(option)
            .arg("--torrent-store")
            .arg(&store));
        let stderr = text(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{option:?}: {stderr}");
        let refused = format!("'--no-seed' cannot be used with '{}", option[0]);
        assert!(stderr.contains(&refused), "{stderr}");
        assert!(!store.exists(), "{option:?} stored something");
    }
    // A field publish computes is refused in --set, before anything is hashed: given, it made
    // a record naming other bytes or another torrent than the one stored.
    for field in [
        "md5=0123456789abcdef0123456789abcdef",
        "sha256=00",
        "info_hash=00",
        "torrent_file_name=x.torrent",
        "key=other",
    ] {
        let o = run(pow()
            .arg("--pow-dir")
            .arg(&pow_dir)
            .arg("publish")
            .arg(&data)
            .args(["--no-seed", "--set", field, "--torrent-store"])
            .arg(&store));
        let stderr = text(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{field}: {stderr}");
        assert!(
            stderr.contains("publish computes") || stderr.contains("give it as --key"),
            "{stderr}"
        );
        assert!(!store.exists(), "{field}: stored something");
    }
    let o = run(pow()
        .arg("--pow-dir")
        .arg(&pow_dir)
        .arg("publish")
        .arg(&data)
        .args(["--no-seed", "--json", "--piece-length", "65536"])
        .arg("--torrent-store")
        .arg(&store));
    assert!(o.status.success(), "publish: {}", text(&o.stderr));
    let summary = json_of(&o);
    let torrent = store.join(summary["torrent_file_name"].as_str().unwrap());

    let lt = run(Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(LT_CONTENT_DIGESTS)
        .arg(&torrent)
        .arg(work.path()));
    assert!(lt.status.success(), "libtorrent: {}", text(&lt.stderr));
    let lt = text(&lt.stdout);
    let [md5, sha256, count]: [&str; 3] = lt.split_whitespace().collect::<Vec<_>>()[..]
        .try_into()
        .unwrap();
    println!("libtorrent's order: md5 {md5}, sha256 {sha256}, {count} files");
    assert_eq!(count, "6");
    assert_eq!(summary["md5"], md5);
    assert_eq!(summary["sha256"], sha256);
    assert_eq!(
        torrent.file_name().unwrap(),
        format!("{md5}.torrent").as_str()
    );
    let size: usize = files.iter().map(|f| f.1).sum();
    assert_eq!(summary["size"], size);
}

/// A load whose `--base-dir` lies inside another source's verified directory is refused where
/// it would write one of that directory's files (it used to check that file against its own
/// torrent and write over it), and goes ahead where it only puts a file beside them.
#[test]
fn a_load_inside_another_sources_directory_never_overwrites_its_files() {
    let lab = Lab::new("loader-nested");
    let work = lab.work.path();
    let cells = work.join("published/cells");
    std::fs::create_dir_all(&cells).unwrap();
    make_zip(&cells.join("a.zip"), 2, 31);
    make_zip(&cells.join("b.zip"), 1, 32);
    let pow_dir = work.join("pow");
    assert!(run(pow().arg("--pow-dir").arg(&pow_dir).arg("init"))
        .status
        .success());
    let store = work.join("store");
    let publish =
        |path: &Path, key: &str| store.join(publish_unseeded(&pow_dir, path, key, &store));
    publish(&cells, "cells");
    let before = std::fs::read(cells.join("a.zip")).unwrap();
    // Another version of a.zip, and a file the directory lacks, each published on its own.
    let other = work.join("other");
    std::fs::create_dir_all(&other).unwrap();
    make_zip(&other.join("a.zip"), 2, 33);
    make_zip(&other.join("c.zip"), 1, 34);
    let a2 = publish(&other.join("a.zip"), "a-2");
    let c = publish(&other.join("c.zip"), "c");

    let store_arg = store.to_str().unwrap();
    // A load with --base-dir the cells directory, from a seed of `torrent` alone.
    let load_into_cells = |torrent: &Path, id: &str| {
        let (mut seed, port) = pow_seed(torrent, &other);
        let peer = format!("127.0.0.1:{port}");
        let cells_arg = cells.to_str().unwrap();
        let args = ["--torrent-store", store_arg, "--peer", &peer];
        let out = load(
            &pow_dir,
            id,
            &[&args[..], &["--base-dir", cells_arg]].concat(),
        );
        seed.kill().unwrap();
        seed.wait().unwrap();
        out
    };
    let refused = load_into_cells(&a2, "ConnectomeCSVDataSource:a-2");
    let stderr = text(&refused.stderr);
    println!("a.zip into the cells directory: {}", stderr.trim());
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    let expected = format!(
        "{} holds ConnectomeCSVDataSource:cells's verified content",
        cells.join("a.zip").display()
    );
    assert!(stderr.contains(&expected), "{stderr}");
    assert!(std::fs::read(cells.join("a.zip")).unwrap() == before);

    let beside = load_into_cells(&c, "ConnectomeCSVDataSource:c");
    assert!(beside.status.success(), "{}", text(&beside.stderr));
    common::same_bytes(&other.join("c.zip"), &cells.join("c.zip")).unwrap();

    // A file of the directory published on its own: both records stay, and each source loads
    // in place, without network.
    publish(&cells.join("b.zip"), "b");
    for key in ["b", "cells"] {
        let id = format!("ConnectomeCSVDataSource:{key}");
        let in_place = ["--torrent-store", store_arg, "--stall-timeout", "5"];
        let again = load(&pow_dir, &id, &in_place);
        assert!(again.status.success(), "{key}: {}", text(&again.stderr));
        assert_eq!(json_of(&again)["network"], false, "{key}");
        let verify = ["source", "verify", &id];
        let o = run(pow().arg("--pow-dir").arg(&pow_dir).args(verify));
        assert!(o.status.success(), "{key}: {}", text(&o.stderr));
    }
}

/// Two loads of one source into one directory at once (jobs of a cluster array, say): the
/// second waits for the first (a lock in the base directory), then finds the content verified
/// and loads it without network. Both used to download it at once into the same file.
#[test]
fn a_second_load_into_the_same_directory_waits_and_then_needs_no_network() {
    let lab = Lab::new("loader-lock");
    let work = lab.work.path();
    let d = dataset(work, "worms.zip", 8, 41);
    let pow_dir = project(work, "lock", &d.fields());
    let id = "ConnectomeCSVDataSource:lock";
    // Held to 2 MiB/s, the seed keeps the first load busy for about 4 s.
    let (mut seed, port) = pow_seed_with(&d.torrent, &d.seed_dir, &["--max-upload-rate", "2M"]);
    let peer = format!("127.0.0.1:{port}");
    let store = d.store.to_str().unwrap();
    let args = ["--torrent-store", store, "--peer", &peer];
    let first = load_command(&pow_dir, id, &args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The first holds the lock once its base directory has one with its pid in it.
    let base = pow_dir.join("data_source_data/BitTorrentDataSourceDirLoader/lock");
    let lock = base.join(".pow-load.lock");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::fs::read_to_string(&lock).map_or(true, |pid| pid != first.id().to_string()) {
        assert!(Instant::now() < deadline, "the first load took no lock");
        std::thread::sleep(Duration::from_millis(20));
    }
    let first_pid = first.id();
    let second = load(
        &pow_dir,
        id,
        &["--torrent-store", store, "--stall-timeout", "5"],
    );
    let first = first.wait_with_output().unwrap();
    seed.kill().unwrap();
    seed.wait().unwrap();
    assert!(first.status.success(), "first: {}", text(&first.stderr));
    let stderr = text(&second.stderr);
    println!("second load: {}", stderr.trim());
    assert!(second.status.success(), "second: {stderr}");
    let waiting = format!("waiting for another pow process (pid {first_pid}) loading into");
    assert!(stderr.contains(&waiting), "{stderr}");
    assert_eq!(json_of(&first)["network"], true);
    assert_eq!(json_of(&second)["network"], false);
    common::same_bytes(&d.zip, &base.join("worms.zip")).unwrap();
}

/// `pow publish` of bytes the store already holds under another name (as `pow serve` stores an
/// upload, or a renamed copy): refused with both names, and nothing recorded. It used to record
/// the local name beside the store's torrent, marked as loaded here, a record no other machine
/// could load (its `file-name` check failed), and then fail to seed ("only 0 of 16 pieces
/// verify").
#[test]
fn publishing_bytes_the_store_holds_under_another_name_is_refused() {
    let work = TempDir::new("publish-renamed");
    let store = work.path().join("store");
    let publish = |pow_dir: &Path, file: &Path| {
        assert!(run(pow().arg("--pow-dir").arg(pow_dir).arg("init"))
            .status
            .success());
        run(pow()
            .arg("--pow-dir")
            .arg(pow_dir)
            .arg("publish")
            .arg(file)
            .args(["--no-seed", "--json", "--torrent-store"])
            .arg(&store))
    };
    let first = work.path().join("a/nuclei_data.zip");
    std::fs::create_dir_all(first.parent().unwrap()).unwrap();
    make_zip(&first, 4, 3);
    let o = publish(&work.path().join("pow-a"), &first);
    assert!(o.status.success(), "publish: {}", text(&o.stderr));
    let md5 = md5_hex(&first);

    let renamed = work.path().join("b/nuclei data.zip");
    std::fs::create_dir_all(renamed.parent().unwrap()).unwrap();
    std::fs::copy(&first, &renamed).unwrap();
    let pow_b = work.path().join("pow-b");
    let o = publish(&pow_b, &renamed);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stdout));
    let stderr = text(&o.stderr);
    assert!(
        stderr.contains(&format!(
            "already holds {md5}.torrent for these bytes, as `nuclei_data.zip`, not `nuclei data.zip`"
        )),
        "{stderr}"
    );
    let listed = run(pow().arg("--pow-dir").arg(&pow_b).args(["source", "list"]));
    assert!(
        !text(&listed.stdout).contains("nuclei"),
        "{}",
        text(&listed.stdout)
    );
    println!("{}", stderr.trim());
}

/// A publish whose seed cannot start (its peer port is taken) still publishes, and says so
/// honestly: the summary has `"seeding": false` and why, and the exit status is 1. The summary
/// used to say `"seeding": true` before the seed's check and bind, which then failed.
#[test]
fn a_publish_that_cannot_seed_says_so_in_its_summary() {
    let work = TempDir::new("publish-port-taken");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let zip = work.path().join("tracks.zip");
    make_zip(&zip, 2, 9);
    let pow_dir = work.path().join("pow");
    assert!(run(pow().arg("--pow-dir").arg(&pow_dir).arg("init"))
        .status
        .success());
    let o = run(pow()
        .arg("--pow-dir")
        .arg(&pow_dir)
        .arg("publish")
        .arg(&zip)
        .args([
            "--json",
            "--bind",
            "127.0.0.1",
            "--port",
            &port,
            "--torrent-store",
        ])
        .arg(work.path().join("store")));
    println!("{}{}", text(&o.stdout), text(&o.stderr));
    assert_eq!(o.status.code(), Some(1));
    let summary: serde_json::Value = serde_json::from_str(text(&o.stdout).trim()).unwrap();
    assert_eq!(summary["seeding"], false, "{summary}");
    assert!(
        summary["seed_error"].as_str().unwrap().contains(&port),
        "{summary}"
    );
    assert!(text(&o.stderr).contains("published, but cannot seed it"));
    let listed = run(pow()
        .arg("--pow-dir")
        .arg(&pow_dir)
        .args(["source", "list"]));
    assert!(
        text(&listed.stdout).contains("tracks"),
        "the record is kept"
    );
}

/// The content's MD5 is computed while it downloads, not in a second pass after it: with the
/// transfer held to 8 MiB/s, the picker takes pieces front to back and the digest follows the
/// verified ones, so most of the content is digested before the transfer ends. The result is
/// the same: every check passes, and the file is the seed's, byte for byte. Then a piece
/// spoiled on disk: the next load digests what its check finds good, fetches that piece again,
/// and goes on to the right MD5.
#[test]
fn load_digests_the_content_while_it_downloads() {
    // The lab's lock (the load's peer port is a lab port) and its tracker (the torrent's).
    let lab = Lab::new("loader-follow");
    let work = lab.work.path();
    let d = dataset(work, "connectome.zip", 24, 7);
    let (mut seed, seed_port) = pow_seed(&d.torrent, &d.seed_dir);

    let pow_dir = project(work, "follow", &d.fields());
    let out = load(
        &pow_dir,
        "ConnectomeCSVDataSource:follow",
        &[
            "--torrent-store",
            d.store.to_str().unwrap(),
            "--peer",
            &format!("127.0.0.1:{seed_port}"),
            "--max-download-rate",
            "8M",
        ],
    );
    assert!(out.status.success(), "load: {}", text(&out.stderr));
    let json = json_of(&out);
    assert_passed(&json, &["sha1-pieces", "md5-torrent-name", "md5-field"]);
    common::same_bytes(&d.zip, Path::new(json["content"].as_str().unwrap())).unwrap();
    let bytes = json["bytes"].as_u64().unwrap();
    let during = json["digested_during_transfer"].as_u64().unwrap();
    println!(
        "{bytes} bytes in {:.2} s: {during} digested during the transfer, the rest in {:.3} s after it",
        json["transfer_seconds"].as_f64().unwrap(),
        json["digest_seconds"].as_f64().unwrap()
    );
    assert!(
        during >= bytes / 2,
        "only {during} of {bytes} bytes digested during a {:.1} s transfer",
        json["transfer_seconds"].as_f64().unwrap()
    );

    // A piece in the middle spoiled on disk: the check's digest stops before it, the piece
    // is fetched again, and the digest goes on from there to the right MD5.
    let content = PathBuf::from(json["content"].as_str().unwrap());
    let mut bytes = std::fs::read(&content).unwrap();
    bytes[(40 * PIECE + 1000) as usize] ^= 0xff;
    std::fs::write(&content, &bytes).unwrap();
    let out = load(
        &pow_dir,
        "ConnectomeCSVDataSource:follow",
        &[
            "--torrent-store",
            d.store.to_str().unwrap(),
            "--peer",
            &format!("127.0.0.1:{seed_port}"),
        ],
    );
    seed.kill().unwrap();
    seed.wait().unwrap();
    assert!(out.status.success(), "reload: {}", text(&out.stderr));
    let json = json_of(&out);
    assert_passed(&json, &["sha1-pieces", "md5-torrent-name", "md5-field"]);
    let pieces = json["pieces_total"].as_u64().unwrap();
    assert_eq!(json["pieces_already_on_disk"].as_u64().unwrap(), pieces - 1);
    assert_eq!(json["downloaded"].as_u64().unwrap(), PIECE);
    common::same_bytes(&d.zip, &content).unwrap();
}

/// A full disk under a load stops it at once with an error naming the file and the pieces kept
/// (it used to wait for peers that could never be written); a rerun with room finds those
/// pieces on disk, fetches the rest, and passes every check.
#[test]
fn a_full_disk_stops_a_load_clearly_and_a_rerun_with_room_completes_it() {
    let lab = Lab::new("loader-full");
    let work = lab.work.path();
    let d = dataset(work, "microscopy.zip", 12, 5);
    let (mut seed, seed_port) = pow_seed(&d.torrent, &d.seed_dir);
    let pow_dir = project(work, "full", &d.fields());
    let base = work.join("small");
    // 60 % of the content.
    let disk = match Tmpfs::mount(&base, "7373k") {
        Ok(disk) => disk,
        Err(e) => {
            println!("SKIPPED: cannot mount a tmpfs here ({e}); the disk-full case needs root");
            seed.kill().unwrap();
            seed.wait().unwrap();
            return;
        }
    };
    let peer = format!("127.0.0.1:{seed_port}");
    let args = [
        "--torrent-store",
        d.store.to_str().unwrap(),
        "--peer",
        &peer,
        "--base-dir",
        base.to_str().unwrap(),
    ];
    let started = Instant::now();
    let first = load(&pow_dir, "ConnectomeCSVDataSource:full", &args);
    let stderr = text(&first.stderr);
    assert!(!first.status.success(), "a full disk must fail the load");
    let line = stderr
        .lines()
        .find(|l| l.contains("cannot write"))
        .unwrap_or_else(|| panic!("no clear error: {stderr}"));
    assert!(
        line.contains("microscopy.zip")
            && line.contains("No space left on device")
            && line.contains("run again to resume"),
        "{line}"
    );
    let verified: u64 = line
        .split("stopped with ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no piece count: {line}"));
    println!(
        "full disk after {:.1} s: {line}",
        started.elapsed().as_secs_f64()
    );
    assert!(verified > 0, "nothing verified before the disk filled");

    disk.resize("32m");
    let second = load(&pow_dir, "ConnectomeCSVDataSource:full", &args);
    seed.kill().unwrap();
    seed.wait().unwrap();
    assert!(second.status.success(), "rerun: {}", text(&second.stderr));
    let json = json_of(&second);
    assert_passed(&json, &["sha1-pieces", "md5-torrent-name", "md5-field"]);
    let on_disk = json["pieces_already_on_disk"].as_u64().unwrap();
    assert!(
        on_disk >= verified,
        "{verified} pieces were verified before the disk filled, the rerun found {on_disk}"
    );
    common::same_bytes(&d.zip, &base.join("microscopy.zip")).unwrap();
    println!(
        "rerun with room: {on_disk} pieces already on disk, {} bytes fetched, every check passed",
        json["downloaded"]
    );
}

/// Two data sources whose torrents both hold a `worms.zip` (two versions of a dataset
/// published under two keys), loaded with one `--base-dir` (the second time through a
/// symlink): the second load is refused before anything is downloaded, naming the first
/// source, whose verified file stays as it was. The second loads into its own directory; the
/// first loads into the shared one again. And a file published, edited and published again
/// under another key: the second key's load finds its content in place, and the first key's
/// record of that path is gone.
#[test]
fn a_load_never_overwrites_another_sources_verified_content() {
    let lab = Lab::new("loader-collide");
    let work = lab.work.path();
    let v1 = dataset(&work.join("v1"), "worms.zip", 4, 21);
    let v2 = dataset(&work.join("v2"), "worms.zip", 4, 22);
    let pow_dir = project(work, "worms-2019", &v1.fields());
    let defs = work.join("worms-2020.toml");
    std::fs::write(
        &defs,
        format!(
            "[[source]]\ntype = \"ConnectomeCSVDataSource\"\nkey = \"worms-2020\"\n{}",
            v2.fields()
        ),
    )
    .unwrap();
    let o = run(pow().arg("--pow-dir").arg(&pow_dir).arg("save").arg(&defs));
    assert!(o.status.success(), "save: {}", text(&o.stderr));
    let (first_id, second_id) = (
        "ConnectomeCSVDataSource:worms-2019",
        "ConnectomeCSVDataSource:worms-2020",
    );
    let shared = work.join("shared");
    let also_shared = work.join("also-shared");
    std::os::unix::fs::symlink(&shared, &also_shared).unwrap();
    let shared_args = |d: &Dataset, peer: &str, base: &Path| -> Vec<String> {
        [
            "--torrent-store",
            d.store.to_str().unwrap(),
            "--peer",
            peer,
            "--base-dir",
            base.to_str().unwrap(),
        ]
        .map(String::from)
        .to_vec()
    };
    fn strs(v: &[String]) -> Vec<&str> {
        v.iter().map(String::as_str).collect()
    }

    let (mut seed, port) = pow_seed(&v1.torrent, &v1.seed_dir);
    let first = load(
        &pow_dir,
        first_id,
        &strs(&shared_args(&v1, &format!("127.0.0.1:{port}"), &shared)),
    );
    seed.kill().unwrap();
    seed.wait().unwrap();
    assert!(first.status.success(), "{}", text(&first.stderr));
    let shared_zip = shared.join("worms.zip");
    common::same_bytes(&v1.zip, &shared_zip).unwrap();

    let (mut seed, port) = pow_seed(&v2.torrent, &v2.seed_dir);
    let peer = format!("127.0.0.1:{port}");
    let refused = load(
        &pow_dir,
        second_id,
        &strs(&shared_args(&v2, &peer, &also_shared)),
    );
    let stderr = text(&refused.stderr);
    println!("second source into the shared directory: {}", stderr.trim());
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    let (h1, h2) = (info_hash_of(&v1.torrent), info_hash_of(&v2.torrent));
    let expected = format!(
        "cannot load {second_id}: {} holds {first_id}'s verified content (info-hash {h1}), \
         which this torrent ({h2}) would overwrite; nothing downloaded",
        also_shared.join("worms.zip").display()
    );
    assert!(stderr.contains(&expected), "{stderr}");
    common::same_bytes(&v1.zip, &shared_zip).unwrap();
    let written: Vec<_> = std::fs::read_dir(&shared)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.contains(&h2))
        .collect();
    assert!(written.is_empty(), "{written:?}");

    let own = load(
        &pow_dir,
        second_id,
        &[
            "--torrent-store",
            v2.store.to_str().unwrap(),
            "--peer",
            &peer,
        ],
    );
    seed.kill().unwrap();
    seed.wait().unwrap();
    assert!(own.status.success(), "{}", text(&own.stderr));
    let own = json_of(&own);
    common::same_bytes(&v2.zip, Path::new(own["content"].as_str().unwrap())).unwrap();

    let again = load(
        &pow_dir,
        first_id,
        &strs(&shared_args(&v1, "127.0.0.1:9", &shared)),
    );
    assert!(again.status.success(), "{}", text(&again.stderr));
    assert_eq!(json_of(&again)["network"], false);

    let published = work.join("published");
    std::fs::create_dir_all(&published).unwrap();
    let zip = published.join("worms.zip");
    let publish = |key: &str| {
        let o = run(pow()
            .arg("--pow-dir")
            .arg(&pow_dir)
            .arg("publish")
            .arg(&zip)
            .args(["--type", "ConnectomeCSVDataSource", "--key", key])
            .args(["--no-seed", "--torrent-store", v1.store.to_str().unwrap()]));
        assert!(o.status.success(), "publish {key}: {}", text(&o.stderr));
    };
    std::fs::copy(&v1.zip, &zip).unwrap();
    publish("pub-1");
    std::fs::copy(&v2.zip, &zip).unwrap();
    publish("pub-2");
    let own = load(
        &pow_dir,
        "ConnectomeCSVDataSource:pub-2",
        &["--torrent-store", v1.store.to_str().unwrap()],
    );
    assert!(own.status.success(), "{}", text(&own.stderr));
    let own = json_of(&own);
    assert_eq!(own["network"], false);
    assert_eq!(own["content"].as_str(), zip.to_str());
    let query = "SELECT ?dir WHERE { GRAPH <urn:x-local:loader-state> { \
                 <http://openworm.org/entities/ConnectomeCSVDataSource/pub-1> \
                 <urn:x-pow:loader#localDirectory> ?dir } }";
    let o = run(pow()
        .arg("--pow-dir")
        .arg(&pow_dir)
        .args(["source", "query", query]));
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(
        !text(&o.stdout).contains("published"),
        "{}",
        text(&o.stdout)
    );
}

/// A record changed to name new content (its TOML definition saved again with the torrent of
/// version 2) after version 1 was loaded: the load of version 2 goes beside version 1, with the
/// files the two share copied rather than downloaded, and takes its place only once verified.
/// A load of it that cannot finish leaves version 1 whole, and recorded as loaded (and
/// `source verify` says the new content is not loaded yet).
#[test]
fn an_updated_source_replaces_its_loaded_content_only_once_the_new_is_verified() {
    let lab = Lab::new("loader-update");
    let work = lab.work.path();
    let d = dataset(work, "worms.zip", 8, 11);
    let store = d.store.to_str().unwrap();
    let pow_dir = project(work, "update", &d.fields());
    let id = "ConnectomeCSVDataSource:update";
    let recorded_hash = || {
        let iri = "http://openworm.org/entities/ConnectomeCSVDataSource/update";
        let query = format!(
            "SELECT ?hash WHERE {{ GRAPH <urn:x-local:loader-state> {{ <{iri}> \
             <urn:x-pow:loader#infoHash> ?hash }} }}"
        );
        let o = run(pow()
            .arg("--pow-dir")
            .arg(&pow_dir)
            .args(["source", "query", &query]));
        assert!(o.status.success(), "{}", text(&o.stderr));
        text(&o.stdout)
    };

    let (mut seed, seed_port) = pow_seed(&d.torrent, &d.seed_dir);
    let peer = format!("127.0.0.1:{seed_port}");
    let first = load(&pow_dir, id, &["--torrent-store", store, "--peer", &peer]);
    seed.kill().unwrap();
    seed.wait().unwrap();
    assert!(first.status.success(), "{}", text(&first.stderr));
    let first = json_of(&first);
    let base = PathBuf::from(first["directory"].as_str().unwrap());
    let content = PathBuf::from(first["content"].as_str().unwrap());
    common::same_bytes(&d.zip, &content).unwrap();

    // Another version of the zip in `work/<tag>/worms.zip`, and its torrent in the store: the
    // file, its MD5 and the torrent.
    let version = |tag: &str, bytes: &[u8]| {
        let dir = work.join(tag);
        std::fs::create_dir_all(&dir).unwrap();
        let zip = dir.join("worms.zip");
        std::fs::write(&zip, bytes).unwrap();
        let md5 = md5_hex(&zip);
        let torrent = d.store.join(format!("{md5}.torrent"));
        create_torrent(&zip, &torrent);
        (zip, md5, torrent)
    };
    // The source's definition saved over, naming the version with this MD5.
    let save = |md5: &str| {
        let defs = work.join("update-again.toml");
        std::fs::write(
            &defs,
            format!(
                "[[source]]\ntype = \"ConnectomeCSVDataSource\"\nkey = \"update\"\n\
                 torrent_file_name = \"{md5}.torrent\"\nmd5 = \"{md5}\"\n"
            ),
        )
        .unwrap();
        let o = run(pow().arg("--pow-dir").arg(&pow_dir).arg("save").arg(&defs));
        assert!(o.status.success(), "save: {}", text(&o.stderr));
    };

    // Version 2: the same zip but for one byte of piece 5; its definition saved over the first.
    let mut bytes = std::fs::read(&d.zip).unwrap();
    bytes[5 * PIECE as usize + 7] ^= 0xff;
    let (v2, v2_md5, v2_torrent) = version("v2", &bytes);
    let v2_dir = v2.parent().unwrap().to_path_buf();
    let pieces = bytes.len().div_ceil(PIECE as usize);
    save(&v2_md5);
    let (v1_hash, v2_hash) = (info_hash_of(&d.torrent), info_hash_of(&v2_torrent));
    let update_dir = base.join(format!(".pow-update-{v2_hash}"));

    // No peer has version 2: the load stops with the pieces the copy of version 1 gave, and
    // version 1 stays whole and recorded.
    let stopped = load(
        &pow_dir,
        id,
        &["--torrent-store", store, "--stall-timeout", "2"],
    );
    let stderr = text(&stopped.stderr);
    println!("update without a seed: {}", stderr.trim());
    assert_eq!(stopped.status.code(), Some(1), "{stderr}");
    let kept = format!(
        "with {} of {pieces} pieces verified (kept in {}; ",
        pieces - 1,
        update_dir.display()
    );
    assert!(stderr.contains(&kept), "{stderr}");
    common::same_bytes(&d.zip, &content).unwrap();
    let recorded = recorded_hash();
    assert!(
        recorded.contains(&v1_hash) && !recorded.contains(&v2_hash),
        "{recorded}"
    );
    // `source verify` says why the directory does not hold what the record names.
    let o = run(pow().arg("--pow-dir").arg(&pow_dir).args([
        "source",
        "verify",
        id,
        "--torrent-store",
        store,
    ]));
    let stderr = text(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "the record names content not loaded yet (info-hash {v2_hash}); {} holds the \
             content loaded before (info-hash {v1_hash})",
            base.display()
        )),
        "{stderr}"
    );

    // Version 3 saved and loaded without a seed, then version 2 saved again: version 3's
    // update directory is abandoned, and goes once version 2 is in place.
    let mut v3_bytes = bytes.clone();
    v3_bytes[6 * PIECE as usize] ^= 0xff;
    let (_, v3_md5, v3_torrent) = version("v3", &v3_bytes);
    save(&v3_md5);
    let stopped = load(
        &pow_dir,
        id,
        &["--torrent-store", store, "--stall-timeout", "2"],
    );
    assert_eq!(stopped.status.code(), Some(1), "{}", text(&stopped.stderr));
    let v3_update_dir = base.join(format!(".pow-update-{}", info_hash_of(&v3_torrent)));
    assert!(v3_update_dir.is_dir());
    // Another source's update directory, and one without a mark, are not this source's.
    let others_update = base.join(format!(".pow-update-{}", "ab".repeat(20)));
    std::fs::create_dir_all(&others_update).unwrap();
    std::fs::write(
        others_update.join(".pow-source"),
        "http://openworm.org/entities/ConnectomeCSVDataSource/other",
    )
    .unwrap();
    let unmarked_update = base.join(format!(".pow-update-{}", "cd".repeat(20)));
    std::fs::create_dir_all(&unmarked_update).unwrap();
    save(&v2_md5);

    // With a seed of version 2, the rerun fetches the changed piece alone and puts version 2
    // in place of version 1.
    let (mut seed, seed_port) = pow_seed(&v2_torrent, &v2_dir);
    let peer = format!("127.0.0.1:{seed_port}");
    let second = load(&pow_dir, id, &["--torrent-store", store, "--peer", &peer]);
    seed.kill().unwrap();
    seed.wait().unwrap();
    assert!(second.status.success(), "{}", text(&second.stderr));
    let json = json_of(&second);
    assert_passed(&json, &["sha1-pieces", "md5-torrent-name", "md5-field"]);
    assert_eq!(
        json["pieces_already_on_disk"].as_u64(),
        Some(pieces as u64 - 1)
    );
    assert_eq!(json["downloaded"].as_u64(), Some(PIECE));
    assert_eq!(json["content"], first["content"]);
    common::same_bytes(&v2, &content).unwrap();
    let recorded = recorded_hash();
    assert!(
        recorded.contains(&v2_hash) && !recorded.contains(&v1_hash),
        "{recorded}"
    );
    let mut left: Vec<String> = std::fs::read_dir(&base)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    println!("in the base directory after the update: {left:?}");
    assert!(!update_dir.exists(), "{left:?}");
    assert!(
        !v3_update_dir.exists(),
        "version 3's abandoned update: {left:?}"
    );
    assert!(
        others_update.is_dir() && unmarked_update.is_dir(),
        "{left:?}"
    );
    assert!(
        !left.iter().any(|name| name.contains(&v1_hash)),
        "no resume file of version 1: {left:?}"
    );
}

/// A directory's update takes the place of its earlier files alone: another source loaded
/// with a `--base-dir` inside it, and the user's own file there, stay (the update used to move
/// the whole directory aside and remove it, and them with it).
#[test]
fn a_directory_update_keeps_what_else_the_directory_holds() {
    let lab = Lab::new("loader-update-dir");
    let work = lab.work.path();
    let store = work.join("store");
    let (v1, v2, c_dir) = (work.join("v1"), work.join("v2"), work.join("c"));
    for dir in [v1.join("cells"), v2.join("cells"), c_dir.clone()] {
        std::fs::create_dir_all(dir).unwrap();
    }
    make_zip(&v1.join("cells/a.zip"), 1, 41);
    make_zip(&v1.join("cells/b.zip"), 1, 42);
    make_zip(&v1.join("cells/old.zip"), 1, 43);
    make_zip(&v2.join("cells/a.zip"), 1, 41);
    make_zip(&v2.join("cells/b.zip"), 1, 44);
    std::fs::write(v2.join("cells/empty"), "").unwrap();
    make_zip(&c_dir.join("c.zip"), 1, 45);
    // The torrents, named by MD5, made by a publisher's own project.
    let publisher = work.join("publisher");
    assert!(run(pow().arg("--pow-dir").arg(&publisher).arg("init"))
        .status
        .success());
    let publish = |path: &Path, key: &str| publish_unseeded(&publisher, path, key, &store);
    let (t1, t2, tc) = (
        publish(&v1.join("cells"), "v1"),
        publish(&v2.join("cells"), "v2"),
        publish(&c_dir.join("c.zip"), "c"),
    );
    let fields = |name: &str| {
        let md5 = name.trim_end_matches(".torrent");
        format!("torrent_file_name = \"{name}\"\nmd5 = \"{md5}\"\n")
    };
    let pow_dir = project(work, "cells", &fields(&t1));
    let save = |key: &str, torrent: &str| {
        let defs = work.join(format!("{key}-again.toml"));
        let body = format!(
            "[[source]]\ntype = \"ConnectomeCSVDataSource\"\nkey = \"{key}\"\n{}",
            fields(torrent)
        );
        std::fs::write(&defs, body).unwrap();
        let o = run(pow().arg("--pow-dir").arg(&pow_dir).arg("save").arg(&defs));
        assert!(o.status.success(), "save: {}", text(&o.stderr));
    };
    let store_arg = store.to_str().unwrap();
    let load_from_seed = |id: &str, torrent: &str, data: &Path, extra: &[&str]| {
        let (mut seed, port) = pow_seed(&store.join(torrent), data);
        let peer = format!("127.0.0.1:{port}");
        let args = ["--torrent-store", store_arg, "--peer", &peer];
        let out = load(&pow_dir, id, &[&args[..], extra].concat());
        seed.kill().unwrap();
        seed.wait().unwrap();
        assert!(out.status.success(), "{id}: {}", text(&out.stderr));
        json_of(&out)
    };

    let first = load_from_seed("ConnectomeCSVDataSource:cells", &t1, &v1, &[]);
    let cells = PathBuf::from(first["content"].as_str().unwrap());
    std::fs::write(cells.join("notes.txt"), "my notes").unwrap();
    save("c", &tc);
    let inside = cells.to_str().unwrap();
    load_from_seed(
        "ConnectomeCSVDataSource:c",
        &tc,
        &c_dir,
        &["--base-dir", inside],
    );

    save("cells", &t2);
    let update = load_from_seed("ConnectomeCSVDataSource:cells", &t2, &v2, &[]);
    assert_passed(&update, &["sha1-pieces", "md5-torrent-name"]);
    common::same_bytes(&v2.join("cells/b.zip"), &cells.join("b.zip")).unwrap();
    assert!(
        !cells.join("old.zip").exists(),
        "the earlier version's own file goes"
    );
    assert_eq!(
        std::fs::read_to_string(cells.join("notes.txt")).unwrap(),
        "my notes"
    );
    common::same_bytes(&c_dir.join("c.zip"), &cells.join("c.zip")).unwrap();
    let verify = ["source", "verify", "ConnectomeCSVDataSource:c"];
    let o = run(pow().arg("--pow-dir").arg(&pow_dir).args(verify));
    assert!(
        o.status.success(),
        "c after the update of cells: {}",
        text(&o.stderr)
    );
    let mut left: Vec<String> = std::fs::read_dir(cells.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    println!("beside the content after the update: {left:?}");
    assert!(
        !left.iter().any(|name| name.starts_with(".pow-update-")),
        "{left:?}"
    );

    // A load killed after it recorded the update, before it removed the update directory
    // (with the earlier content moved aside in it): the next load removes it. It was left
    // for good, as this content's own.
    let leftover = cells.parent().unwrap().join(format!(
        ".pow-update-{}",
        update["info_hash"].as_str().unwrap()
    ));
    std::fs::create_dir_all(leftover.join(".pow-replaced")).unwrap();
    std::fs::write(
        leftover.join(".pow-source"),
        "http://openworm.org/entities/ConnectomeCSVDataSource/cells",
    )
    .unwrap();
    std::fs::copy(
        v1.join("cells/old.zip"),
        leftover.join(".pow-replaced/old.zip"),
    )
    .unwrap();
    let again = load(
        &pow_dir,
        "ConnectomeCSVDataSource:cells",
        &["--torrent-store", store_arg, "--stall-timeout", "5"],
    );
    assert!(again.status.success(), "{}", text(&again.stderr));
    assert_eq!(json_of(&again)["network"], false);
    assert!(
        !leftover.exists(),
        "the finished update's directory is removed"
    );

    let load_in_place = || {
        load(
            &pow_dir,
            "ConnectomeCSVDataSource:cells",
            &["--torrent-store", store_arg, "--stall-timeout", "5"],
        )
    };
    // An empty file lost since: no piece covers it, so the load makes it. Every load failed
    // on it ("cannot read the content").
    std::fs::remove_file(cells.join("empty")).unwrap();
    let again = load_in_place();
    assert!(again.status.success(), "{}", text(&again.stderr));
    assert_eq!(json_of(&again)["network"], false);
    assert_eq!(std::fs::read(cells.join("empty")).unwrap(), b"");
    // One linked in from elsewhere is read, not opened to write (the load failed on it).
    let elsewhere = work.join("elsewhere-empty");
    std::fs::write(&elsewhere, "").unwrap();
    std::fs::remove_file(cells.join("empty")).unwrap();
    std::os::unix::fs::symlink(&elsewhere, cells.join("empty")).unwrap();
    let again = load_in_place();
    assert!(again.status.success(), "{}", text(&again.stderr));
    assert_eq!(json_of(&again)["network"], false);

    // Bytes added past a file's end: every piece still verifies, but the file is not the
    // content. It was reported verified, MD5 and all.
    let a_zip = cells.join("a.zip");
    let length = std::fs::metadata(&a_zip).unwrap().len();
    std::fs::OpenOptions::new()
        .append(true)
        .open(&a_zip)
        .unwrap()
        .set_len(length + 10)
        .unwrap();
    let expected = format!(
        "{} is {} bytes, the torrent says {length}",
        a_zip.display(),
        length + 10
    );
    let verify = ["source", "verify", "ConnectomeCSVDataSource:cells"];
    let o = run(pow().arg("--pow-dir").arg(&pow_dir).args(verify));
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains(&expected), "{}", text(&o.stderr));
    let refused = load_in_place();
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused.stderr));
    assert!(
        text(&refused.stderr).contains(&expected),
        "{}",
        text(&refused.stderr)
    );
    println!("a longer file: {}", text(&refused.stderr).trim());
    std::fs::OpenOptions::new()
        .write(true)
        .open(&a_zip)
        .unwrap()
        .set_len(length)
        .unwrap();
    assert!(load_in_place().status.success());
}
