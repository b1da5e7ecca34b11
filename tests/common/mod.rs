//! Shared helpers for the cross-crate and interop tests.
#![allow(dead_code)]

pub mod nginx;
pub mod raw_peer;
pub mod serve;
pub mod trace;
pub mod transmission;

use std::path::{Path, PathBuf};
use std::process::Command;

/// A reqwest client builder with pow's TLS configuration: reqwest is built without a TLS
/// provider of its own (pow-tls supplies it), so its `Client::new()` cannot be used.
pub fn http_client_builder() -> reqwest::blocking::ClientBuilder {
    reqwest::blocking::Client::builder()
        .tls_backend_preconfigured((*pow_tls::client_config()).clone())
}

/// `GET url` (what `reqwest::blocking::get` does, with pow's TLS configuration).
pub fn http_get(url: impl reqwest::IntoUrl) -> reqwest::Result<reqwest::blocking::Response> {
    http_client_builder().build()?.get(url).send()
}

/// A log line or log without terminal colour codes (`ESC [ ... m` and the like).
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The workspace root (this package's manifest dir).
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn fixtures() -> PathBuf {
    root().join("fixtures")
}

/// `../shared/swarm-lab` next to the checkout (CI clones with shared/ beside it).
pub fn swarm_lab() -> PathBuf {
    root().join("../shared/swarm-lab")
}

/// The `pow` binary built by `cargo build --release` into the same target dir as this test.
pub fn pow_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test-binary> -> target/<profile>/pow
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .join("pow");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build --release --workspace` before the tests",
        bin.display()
    );
    bin
}

pub fn pow() -> Command {
    Command::new(pow_bin())
}

/// Serialises every test that uses swarm-lab's fixed peer ports, across test binaries too.
/// Hold the returned guard for the whole test.
pub fn lab_lock() -> std::fs::File {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open("/tmp/pow-swarm-lab.lock")
        .expect("open lock file");
    file.lock().expect("lock swarm-lab");
    file
}

/// A fresh temporary directory under the system temp dir, removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let dir = std::env::temp_dir().join(format!("pow-{tag}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A swarm-lab session: holds the lab lock, has its own state dir, and stops every seeder and
/// the tracker it started when dropped (also when the test fails).
pub struct Lab {
    _lock: std::fs::File,
    pub state: TempDir,
    pub work: TempDir,
}

/// swarm-lab's fixed peer and control ports, and swarm8.sh's (the ranges `scripts/test-all`
/// reserves from the ephemeral range).
const LAB_PORTS: [std::ops::RangeInclusive<u16>; 5] = [
    51101..=51105,
    51201..=51205,
    51301..=51304,
    51401..=51404,
    52100..=52108,
];

/// Kills `pow` processes still listening on a lab port: a test that failed while its own
/// `pow download` ran (not started through swarm-lab, so `seed.sh stop all` does not know it)
/// would otherwise make the next lab test fail with "Address already in use". Lab tests hold
/// the lab lock, so nothing else may be using these ports now.
fn kill_stray_pow_on_lab_ports() {
    let Ok(out) = Command::new("ss").args(["-ltnpH"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let port = line
            .split_whitespace()
            .nth(3)
            .and_then(|local| local.rsplit(':').next())
            .and_then(|p| p.parse::<u16>().ok());
        if !port.is_some_and(|p| LAB_PORTS.iter().any(|r| r.contains(&p))) {
            continue;
        }
        // users:(("pow",pid=1234,fd=9))
        if let Some(rest) = line.split("((\"pow\",pid=").nth(1) {
            if let Some(pid) = rest.split(',').next() {
                eprintln!("lab: killing a stray pow (pid {pid}) on a lab port: {line}");
                let _ = Command::new("kill").args(["-9", pid]).status();
            }
        }
    }
}

impl Lab {
    pub fn new(tag: &str) -> Lab {
        let lock = lab_lock();
        let lab = Lab {
            _lock: lock,
            state: TempDir::new(&format!("{tag}-state")),
            work: TempDir::new(&format!("{tag}-work")),
        };
        // Leftovers of an earlier, killed run would hold the fixed ports.
        lab.script("seed.sh", &["stop", "all"]);
        kill_stray_pow_on_lab_ports();
        // The open tracker with a 5 s interval: Debian's opentracker is whitelist-only and
        // re-reads its list lazily, so a seeder restarted for a new torrent may not be listed
        // in time. The scripts reuse a running tracker.
        let (ok, _, err) = lab.script("tracker.sh", &["start", "--impl", "tiny"]);
        assert!(ok, "tracker.sh start --impl tiny: {err}");
        lab
    }

    /// Runs a swarm-lab script with this lab's state dir; returns (success, stdout, stderr).
    pub fn script(&self, name: &str, args: &[&str]) -> (bool, String, String) {
        self.script_env(name, args, &[])
    }

    pub fn script_env(
        &self,
        name: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> (bool, String, String) {
        let out = Command::new("bash")
            .arg(swarm_lab().join(name))
            .args(args)
            .env("SWARM_LAB_STATE", self.state.path())
            .envs(env.iter().copied())
            .output()
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Runs `pow seed` (`seed_cmd`, a swarm-lab `SEED_CMD` template) as swarm-lab's `ext` seeder
    /// on a fresh 48 MiB payload, and aria2, libtorrent and Transmission leeching from it at the
    /// same time; asserts each got the payload's bytes and prints the seed's per-peer upload
    /// counters (`tag` prefixes them) and each leecher's RESULT line.
    pub fn three_real_leechers_at_once(&self, seed_cmd: &str, tag: &str) {
        let (data, torrent) = self.payload("48M", &[]);
        let t = torrent.to_str().unwrap();
        let dir = data.parent().unwrap().to_str().unwrap();
        let (ok, _, err) = self.script_env("seed.sh", &["ext", t, dir], &[("SEED_CMD", seed_cmd)]);
        assert!(ok, "{tag}: {err}");
        let leechers = ["aria2", "libtorrent", "transmission"];
        let out_of = |leecher: &str| self.work.path().join(format!("out3-{leecher}"));
        let results: Vec<(bool, String, String)> = std::thread::scope(|scope| {
            let runs: Vec<_> = leechers
                .iter()
                .map(|leecher| {
                    let out = out_of(leecher);
                    scope.spawn(move || {
                        self.script(
                            "leech.sh",
                            &[leecher, t, out.to_str().unwrap(), "--timeout", "240"],
                        )
                    })
                })
                .collect();
            runs.into_iter().map(|r| r.join().unwrap()).collect()
        });
        self.script("seed.sh", &["stop", "ext"]);
        let log = std::fs::read_to_string(self.state.path().join("seed-ext/client.log"))
            .unwrap_or_default();
        for line in log
            .lines()
            .filter(|l| l.starts_with("uploaded to") || l.starts_with("stopped"))
        {
            println!("{tag}: {line}");
        }
        for (leecher, (ok, stdout, err)) in leechers.iter().zip(&results) {
            assert!(ok, "{leecher}: {stdout}\n{err}");
            let got = out_of(leecher).join(data.file_name().unwrap());
            let bytes = same_bytes(&data, &got).unwrap();
            let result = result_line(stdout);
            println!("{leecher:<12} got {bytes} bytes, verified  {result}");
        }
    }

    /// make-payload.sh SIZE into this lab's work dir; returns (data path, torrent path).
    pub fn payload(&self, size: &str, extra: &[&str]) -> (PathBuf, PathBuf) {
        let mut args = vec![size, self.work.path().to_str().unwrap()];
        args.extend_from_slice(extra);
        let (ok, stdout, stderr) = self.script("make-payload.sh", &args);
        assert!(ok, "make-payload.sh {args:?}: {stderr}");
        let torrent = PathBuf::from(stdout.lines().next().unwrap().trim());
        let name = torrent.file_stem().unwrap().to_str().unwrap().to_string();
        (self.work.path().join("data").join(name), torrent)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.script("seed.sh", &["stop", "all"]);
        self.script("tracker.sh", &["stop"]);
    }
}

/// `cmp -r`-like: every file under `expected` has the same bytes under `actual`.
pub fn same_tree(expected: &Path, actual: &Path) -> Result<u64, String> {
    compare_tree(expected, actual, false)
}

/// The `RESULT ...` line swarm-lab's `leech.sh` prints (speed, CPU, RSS), or "" if none.
pub fn result_line(stdout: &str) -> &str {
    stdout
        .lines()
        .find(|l| l.starts_with("RESULT"))
        .unwrap_or("")
}

/// As [`same_tree`], but a zero-length file may be missing: Transmission 3.00 never creates
/// empty files it downloads, which says nothing about the seeder.
pub fn same_bytes(expected: &Path, actual: &Path) -> Result<u64, String> {
    compare_tree(expected, actual, true)
}

fn compare_tree(expected: &Path, actual: &Path, empty_may_be_missing: bool) -> Result<u64, String> {
    let meta = std::fs::metadata(expected).map_err(|e| e.to_string())?;
    if meta.is_file() && meta.len() == 0 && empty_may_be_missing && !actual.exists() {
        return Ok(0);
    }
    if meta.is_file() {
        let a = std::fs::read(expected).map_err(|e| format!("{}: {e}", expected.display()))?;
        let b = std::fs::read(actual).map_err(|e| format!("{}: {e}", actual.display()))?;
        if a != b {
            return Err(format!("{} differs", actual.display()));
        }
        return Ok(a.len() as u64);
    }
    let mut total = 0;
    for entry in std::fs::read_dir(expected).map_err(|e| e.to_string())? {
        let name = entry.map_err(|e| e.to_string())?.file_name();
        total += compare_tree(
            &expected.join(&name),
            &actual.join(&name),
            empty_may_be_missing,
        )?;
    }
    Ok(total)
}

/// The real clients on this machine: aria2, libtorrent and Transmission always (the test
/// command installs them), rqbit when it could be built (see scripts/test-all).
pub fn real_clients() -> Vec<&'static str> {
    let mut clients = vec!["libtorrent", "aria2", "transmission"];
    let rqbit = Command::new("bash")
        .arg("-c")
        .arg(format!(". {}/lib.sh && rqbit_bin", swarm_lab().display()))
        .output()
        .is_ok_and(|o| o.status.success());
    if rqbit {
        clients.push("rqbit");
    } else {
        println!("rqbit is not installed: its runs are skipped");
    }
    clients
}

/// `len` pseudo-random bytes from an xorshift64 seeded with `seed` (not 0): every block of a
/// payload differs, so a misplaced block cannot verify by accident, and a test's payload is
/// the same on every run.
pub fn pseudo_random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A zip (stored, not deflated) of `mib` MiB of pseudo-random bytes, made by Python's zipfile.
pub fn make_zip(path: &Path, mib: u64, seed: u64) {
    let script = format!(
        "import random, zipfile\n\
         r = random.Random({seed})\n\
         with zipfile.ZipFile({path:?}, 'w', zipfile.ZIP_STORED) as z:\n\
         \x20   z.writestr('neurons.csv', r.randbytes({mib} * 1024 * 1024 - 4096))\n\
         \x20   z.writestr('README.txt', 'OpenWorm test dataset %d\\n' % {seed})\n",
        path = path.to_str().unwrap(),
    );
    let status = Command::new("python3")
        .args(["-c", &script])
        .status()
        .unwrap();
    assert!(status.success(), "python3 zipfile");
}

pub fn md5_hex(path: &Path) -> String {
    let out = Command::new("md5sum").arg(path).output().unwrap();
    String::from_utf8(out.stdout).unwrap()[..32].to_string()
}

pub fn sha256_hex(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8(out.stdout).unwrap()[..64].to_string()
}

/// `pow torrent create DATA -o TORRENT --piece-length N` (no tracker), and the torrent read back.
pub fn create_torrent(data: &Path, torrent: &Path, piece_length: u32) -> pow_metainfo::Metainfo {
    let out = pow()
        .args(["torrent", "create"])
        .arg(data)
        .arg("-o")
        .arg(torrent)
        .args(["--piece-length", &piece_length.to_string()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pow torrent create: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    pow_metainfo::Metainfo::from_file(torrent).unwrap()
}

/// A TCP port on 127.0.0.1 that nobody listened on a moment ago, and that no other call in
/// this test process has handed out: the kernel may give a port it just gave back again, and
/// two peers of one test told the same port (one of them then listening elsewhere) failed a
/// test once. (Another process may still take it before it is bound.)
pub fn free_port() -> u16 {
    static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if !handed_out.contains(&port) {
            handed_out.push(port);
            return port;
        }
    }
}

/// The first line a child prints on its piped stdout: where a server listens, what a seed
/// started with.
pub fn first_stdout_line(child: &mut std::process::Child) -> String {
    use std::io::BufRead;
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().expect("stdout is piped"))
        .read_line(&mut line)
        .unwrap();
    line
}

/// `pow tracker --listen 127.0.0.1:0` (announce interval 1 s), killed when dropped.
pub struct PowTracker {
    child: std::process::Child,
    /// The announce URL.
    pub url: String,
    pub port: u16,
}

impl PowTracker {
    pub fn start() -> PowTracker {
        let mut child = Command::new(pow_bin())
            .args(["tracker", "--listen", "127.0.0.1:0", "--interval", "1"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let line = first_stdout_line(&mut child);
        let url = line
            .trim()
            .strip_prefix("tracker listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_string();
        let port = url
            .trim_start_matches("http://127.0.0.1:")
            .split('/')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no port in {url}"));
        PowTracker { child, url, port }
    }
}

impl Drop for PowTracker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A child process killed (and reaped) when dropped, so a failing test leaves none behind.
pub struct Killed(pub std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A process's output as text.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `pow init` of a fresh `.pow` at `dir`, then `pow save` of `definitions` (TOML); returns `dir`.
pub fn project_with(dir: &Path, definitions: &str) -> PathBuf {
    let o = pow()
        .arg("--pow-dir")
        .arg(dir)
        .arg("init")
        .output()
        .unwrap();
    assert!(o.status.success(), "init: {}", text(&o.stderr));
    let defs = dir.with_extension("definitions.toml");
    std::fs::write(&defs, definitions).unwrap();
    let o = pow()
        .arg("--pow-dir")
        .arg(dir)
        .arg("save")
        .arg(&defs)
        .output()
        .unwrap();
    assert!(o.status.success(), "save: {}", text(&o.stderr));
    dir.to_path_buf()
}

/// libtorrent sessions with the DHT on and everything else that finds peers off; the DHT's
/// guards against many nodes on one address (all of ours are 127.0.0.1) relaxed.
pub const LT_DHT: &str = "import libtorrent as lt, sys, time
def session(port, bootstrap=None, **extra):
    settings = {'listen_interfaces': '127.0.0.1:%d' % port, 'enable_dht': True,
        'enable_lsd': False, 'enable_upnp': False, 'enable_natpmp': False,
        'enable_incoming_utp': False, 'enable_outgoing_utp': False,
        'allow_multiple_connections_per_ip': True, 'dht_restrict_routing_ips': False,
        'dht_restrict_search_ips': False, 'dht_ignore_dark_internet': False,
        'dht_prefer_verified_node_ids': False, 'dht_bootstrap_nodes': '',
        'alert_mask': lt.alert.category_t.all_categories}
    if bootstrap:
        settings['dht_bootstrap_nodes'] = '127.0.0.1:%d' % bootstrap
    settings.update(extra)
    return lt.session(settings)
def announced_to(node, info_hash, limit, kick=lambda: None):
    t0 = time.time()
    while time.time() - t0 < limit:
        kick()
        for a in node.pop_alerts():
            if isinstance(a, lt.dht_announce_alert) and str(a.info_hash) == info_hash:
                return '%s:%d' % (a.ip, a.port)
        time.sleep(0.2)
    return None
";

/// Runs `script` after [`LT_DHT`] in Debian's python3 (its libtorrent); stdout piped.
pub fn lt_dht_python(script: &str, args: &[String]) -> Killed {
    Killed(
        std::process::Command::new("/usr/bin/python3")
            .arg("-c")
            .arg(format!("{LT_DHT}{script}"))
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .unwrap(),
    )
}

/// Waits (up to 20 s) until something accepts TCP connections on 127.0.0.1:`port`.
pub fn wait_listening(port: u16, what: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "{what} did not listen"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// `pow seed TORRENT --data DATA` on 127.0.0.1:`port` with `extra` arguments, once it accepts
/// connections; killed when dropped. Stdout goes nowhere, stderr where `stderr` says.
pub fn pow_seed(
    torrent: &Path,
    data: &Path,
    port: u16,
    extra: &[&str],
    stderr: std::process::Stdio,
) -> Killed {
    let seed = Killed(
        pow()
            .arg("seed")
            .arg(torrent)
            .arg("--data")
            .arg(data)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(extra)
            .stdout(std::process::Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap(),
    );
    wait_listening(port, "pow seed");
    seed
}

/// `pow download TARGET -o OUT` on a free port of 127.0.0.1, to add arguments to.
pub fn pow_download(target: &str, out: &Path) -> Command {
    let mut command = pow();
    command
        .arg("download")
        .arg(target)
        .arg("-o")
        .arg(out)
        .args(["--port", &free_port().to_string(), "--bind", "127.0.0.1"]);
    command
}

/// `pow download TARGET -o OUT --json` on a free port of 127.0.0.1 with `extra` arguments;
/// it must succeed. Returns its JSON report. With `POW_TEST_SHOW_STDERR` set, its stderr is
/// printed (with `POW_LOG=debug`: the connection's story, when a test needs debugging).
pub fn pow_download_json(target: &str, out: &Path, extra: &[&str]) -> serde_json::Value {
    let o = pow_download(target, out)
        .arg("--json")
        .args(extra)
        .output()
        .unwrap();
    assert!(o.status.success(), "pow download: {}", text(&o.stderr));
    if std::env::var_os("POW_TEST_SHOW_STDERR").is_some() {
        eprintln!("{}", text(&o.stderr));
    }
    let stdout = text(&o.stdout);
    serde_json::from_str(stdout.lines().last().unwrap()).unwrap()
}

/// Bytes a `pow download --json` report's `list` (`received_by_peer`, `sent_to_peer`) counts
/// for the peer at 127.0.0.1:`port`.
pub fn peer_bytes(report: &serde_json::Value, list: &str, port: u16) -> u64 {
    report[list]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["peer"] == format!("127.0.0.1:{port}"))
        .map(|p| p["bytes"].as_u64().unwrap())
        .sum()
}

/// `mib` MiB of pseudo-random bytes at `dir/name` and its torrent (64 KiB pieces, announcing
/// to `tracker` when given).
pub fn mib_payload(
    dir: &Path,
    name: &str,
    mib: usize,
    tracker: Option<&str>,
) -> (PathBuf, PathBuf) {
    let data_dir = dir.join("data");
    std::fs::create_dir_all(&data_dir).unwrap();
    let data = data_dir.join(name);
    let bytes = pseudo_random_bytes(mib << 20, 0x9E37_79B9_7F4A_7C15 ^ mib as u64);
    std::fs::write(&data, bytes).unwrap();
    let torrent = dir.join(format!("{name}.torrent"));
    match tracker {
        None => {
            create_torrent(&data, &torrent, 65536);
        }
        Some(url) => {
            let o = pow()
                .args(["torrent", "create"])
                .arg(&data)
                .arg("-o")
                .arg(&torrent)
                .args(["--piece-length", "65536", "--tracker", url])
                .output()
                .unwrap();
            assert!(o.status.success(), "torrent create: {}", text(&o.stderr));
        }
    }
    (data, torrent)
}

/// A tmpfs mounted on a directory, unmounted when dropped (also when the test panics).
pub struct Tmpfs(PathBuf);

impl Tmpfs {
    pub fn mount(dir: &Path, size: &str) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
        }
        Ok(Tmpfs(dir.to_path_buf()))
    }

    pub fn resize(&self, size: &str) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .unwrap();
        assert!(status.success(), "remount {}", self.0.display());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.0)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

/// The lines of a `POW_LOG=debug` log in which the session dials `peer` (`IP:PORT`) or
/// handshakes with it after a magnet link's metadata came: one, "connected (out, kept from the
/// metadata phase", when the session went on with the connection the metadata came over.
pub fn dials_after_metadata<'a>(log: &'a str, peer: &str) -> Vec<&'a str> {
    log.lines()
        .skip_while(|l| !l.contains("metadata received"))
        .filter(|l| l.contains(peer))
        .filter(|l| {
            ["connected (out", "handshake", "connect 1"]
                .iter()
                .any(|d| l.contains(d))
        })
        .collect()
}

/// Asserts that `log` shows the session going on with the metadata's connection to `peer`.
pub fn assert_metadata_connection_kept(log: &str, peer: &str, what: &str) {
    let dials = dials_after_metadata(log, peer);
    assert!(
        dials.len() == 1 && dials[0].contains("connected (out, kept from the metadata phase"),
        "{what}: {peer} was dialed again after the metadata:\n{}",
        dials.join("\n")
    );
}
