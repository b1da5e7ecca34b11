//! Acceptance (foundation 5): `pow torrent create` gives the same info-hash as mktorrent (via
//! swarm-lab's make-payload.sh) and as libtorrent's `create_torrent` for the same bytes and piece
//! length, single file and multi-file, 16 KiB to 4 MiB pieces; libtorrent then loads pow's torrent.

mod common;

use std::path::Path;
use std::process::Command;

/// Runs `program` with `args` in `dir`; it must succeed.
fn run_in(dir: &Path, program: &str, args: &[&str]) {
    let out = Command::new(program)
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{program}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// make-payload.sh: deterministic data + a mktorrent .torrent. Returns (data path, torrent path).
fn payload(
    work: &Path,
    size: &str,
    piece_kib: u32,
    multi: bool,
) -> (std::path::PathBuf, std::path::PathBuf) {
    let mut cmd = Command::new("bash");
    cmd.arg(common::swarm_lab().join("make-payload.sh"))
        .arg(size)
        .arg(work)
        .args(["--piece-kib", &piece_kib.to_string()]);
    if multi {
        cmd.arg("--multi");
    }
    let out = cmd.output().expect("make-payload.sh");
    assert!(
        out.status.success(),
        "make-payload.sh: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let torrent = std::path::PathBuf::from(stdout.lines().next().unwrap().trim());
    let name = torrent.file_stem().unwrap().to_str().unwrap().to_string();
    (work.join("data").join(name), torrent)
}

fn pow_create(data: &Path, out: &Path, piece_length: u64) -> serde_json::Value {
    let output = common::pow()
        .args(["torrent", "create"])
        .arg(data)
        .arg("-o")
        .arg(out)
        .args([
            "--piece-length",
            &piece_length.to_string(),
            "--json",
            "--no-date",
        ])
        .args(["--tracker", "http://127.0.0.1:6969/announce"])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

fn pow_show(torrent: &Path) -> serde_json::Value {
    let output = common::pow()
        .args(["torrent", "show", "--json"])
        .arg(torrent)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

/// libtorrent's create_torrent over the same files, added in pow's order (libtorrent's own
/// add_files keeps directory-listing order, which is not stable), v1 only, no pad files; then
/// libtorrent loads pow's torrent. Prints "<lt created hash> <lt loaded hash> <num files>".
const LT_SCRIPT: &str = r#"
import sys, os, libtorrent as lt
data, piece_length, pow_torrent, files = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4:]
fs = lt.file_storage()
base = os.path.dirname(data)
if os.path.isdir(data):
    for rel in files:
        fs.add_file(os.path.join(os.path.basename(data), rel), os.path.getsize(os.path.join(data, rel)))
else:
    fs.add_file(os.path.basename(data), os.path.getsize(data))
ct = lt.create_torrent(fs, piece_length, flags=lt.create_torrent.v1_only)
lt.set_piece_hashes(ct, base)
created = lt.torrent_info(ct.generate()).info_hashes().v1
loaded = lt.load_torrent_file(pow_torrent)
print(created, loaded.info_hashes.v1, loaded.ti.num_files())
"#;

fn libtorrent_check(
    data: &Path,
    piece_length: u64,
    pow_torrent: &Path,
    files: &[String],
) -> Vec<String> {
    let out = Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(LT_SCRIPT)
        .arg(data)
        .arg(piece_length.to_string())
        .arg(pow_torrent)
        .args(files)
        .output()
        .expect("python3 with libtorrent");
    assert!(
        out.status.success(),
        "libtorrent: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

#[test]
fn same_info_hash_as_mktorrent_and_libtorrent() {
    let work = common::TempDir::new("create");
    let mut rows = Vec::new();
    // mktorrent here takes piece lengths from 32 KiB (2^15); 16 KiB is checked against libtorrent.
    for (piece_kib, single_size, multi_size) in [
        (16u32, "1M", "2M"),
        (32, "3M", "3M"),
        (256, "5M", "8M"),
        (1024, "9M", "12M"),
        (4096, "17M", "24M"),
    ] {
        for multi in [false, true] {
            let dir = work.path().join(format!("{piece_kib}-{multi}"));
            let size = if multi { multi_size } else { single_size };
            let piece_length = u64::from(piece_kib) * 1024;
            let (data, mk_torrent) = if piece_kib >= 32 {
                let (data, t) = payload(&dir, size, piece_kib, multi);
                (data, Some(t))
            } else {
                // Data from make-payload (at a piece size mktorrent takes); the torrent is ours.
                let (data, _) = payload(&dir, size, 32, multi);
                (data, None)
            };
            let pow_torrent = dir.join("pow.torrent");
            let ours = pow_create(&data, &pow_torrent, piece_length);
            let our_hash = ours["info_hash"].as_str().unwrap().to_string();
            if let Some(mk) = &mk_torrent {
                let theirs = pow_show(mk);
                assert_eq!(
                    our_hash,
                    theirs["info_hash"].as_str().unwrap(),
                    "mktorrent {piece_kib} KiB multi={multi}"
                );
            }
            let files: Vec<String> = ours["files"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| {
                    f["path"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|c| c.as_str().unwrap())
                        .collect::<Vec<_>>()
                        .join("/")
                })
                .collect();
            let lt = libtorrent_check(
                &data,
                piece_length,
                &pow_torrent,
                if multi { &files } else { &[] },
            );
            assert_eq!(
                lt[0], our_hash,
                "libtorrent create_torrent {piece_kib} KiB multi={multi}"
            );
            assert_eq!(lt[1], our_hash, "libtorrent loads pow's torrent");
            assert_eq!(lt[2], files.len().to_string());
            rows.push(format!(
                "{piece_kib:>5} KiB {:<6} {size:>4} {our_hash} mktorrent={} libtorrent=ok",
                if multi { "multi" } else { "single" },
                if mk_torrent.is_some() { "ok" } else { "n/a" }
            ));
        }
    }
    for row in rows {
        println!("{row}");
    }
}

#[test]
fn cli_exit_codes_and_errors() {
    let work = common::TempDir::new("cli");
    // Bad usage: 2.
    let out = common::pow()
        .args(["torrent", "frobnicate"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = common::pow()
        .args([
            "torrent",
            "create",
            "x",
            "-o",
            "y",
            "--piece-length",
            "1000",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    // Other errors: 1, one line on stderr naming the file.
    let bad = work.path().join("bad.torrent");
    std::fs::write(&bad, b"d4:infod4:name1:xee").unwrap();
    let out = common::pow()
        .args(["torrent", "show"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("bad.torrent") && stderr.contains("pieces"),
        "{stderr}"
    );
    let missing = common::pow()
        .args(["torrent", "show", "/nonexistent.torrent"])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(1));
    let v2 = common::fixtures().join("torrents/valid/v2_only.torrent");
    let out = common::pow()
        .args(["torrent", "show"])
        .arg(&v2)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("BitTorrent v2 only"));
    // Show on a fixture prints the libtorrent-checked hash.
    let out = common::pow()
        .args(["torrent", "show", "--json"])
        .arg(common::fixtures().join("torrents/valid/sample.torrent"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for key in [
        "info_hash",
        "name",
        "total_length",
        "piece_length",
        "piece_count",
        "files",
    ] {
        assert!(!json[key].is_null(), "{key}");
    }
}

/// `pow torrent create` never writes over a file unless given --force (and never over the
/// file it shares, nor into the directory it shares), checks that before hashing, and names a
/// torrent of `.` after the directory.
/// `pow publish --piece-length` takes only what `torrent create` takes.
#[test]
fn torrent_create_keeps_existing_files_and_names_the_current_directory() {
    let work = common::TempDir::new("create-output");
    let data = work.path().join("worm-slices");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("a.csv"), b"1,2,3\n").unwrap();
    let run = |dir: &Path, args: &[&str]| {
        let out = common::pow()
            .current_dir(dir)
            .args(["torrent", "create"])
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // Not into the shared directory: its next torrent would hash this one.
    let (code, stderr) = run(&data, &["."]);
    println!("`create .` into the shared directory: {code:?} {stderr}");
    assert_eq!(code, Some(1));
    assert!(stderr.contains("inside"), "{stderr}");
    let (code, stderr) = run(&data, &[".", "-o", "../worm-slices.torrent"]);
    assert_eq!(code, Some(0), "{stderr}");
    let made = work.path().join("worm-slices.torrent");
    assert_eq!(pow_show(&made)["name"], "worm-slices");
    let before = std::fs::read(&made).unwrap();
    let (code, stderr) = run(
        work.path(),
        &["worm-slices/a.csv", "-o", "worm-slices.torrent"],
    );
    println!("over an existing file: {code:?} {stderr}");
    assert_eq!(code, Some(1));
    assert!(stderr.contains("exists; give --force"), "{stderr}");
    assert_eq!(
        std::fs::read(&made).unwrap(),
        before,
        "replaced without --force"
    );
    let (code, stderr) = run(
        work.path(),
        &["worm-slices/a.csv", "-o", "worm-slices/a.csv", "--force"],
    );
    println!("over the file it shares: {code:?} {stderr}");
    assert_eq!(code, Some(1));
    assert_eq!(std::fs::read(data.join("a.csv")).unwrap(), b"1,2,3\n");
    let (code, stderr) = run(
        work.path(),
        &["worm-slices/a.csv", "-o", "worm-slices.torrent", "--force"],
    );
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(pow_show(&made)["name"], "a.csv");
    let out = common::pow()
        .args(["publish", "--no-seed", "--piece-length", "0"])
        .arg(data.join("a.csv"))
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `pow ARGS`, run by `sh` after `ulimit LIMIT` (`-Sn 256`: the soft limit only).
fn pow_under_ulimit(limit: &str, args: &[&str]) -> Command {
    let mut command = Command::new("sh");
    command
        .args(["-c", &format!("ulimit {limit} && exec \"$@\""), "sh"])
        .arg(common::pow_bin())
        .args(args);
    command
}

/// `pow seed TORRENT --data DATA` under `ulimit LIMIT` on a free port of 127.0.0.1, once it
/// listens; killed when dropped.
fn seed_under_ulimit(limit: &str, torrent: &Path, data: &Path) -> (common::Killed, u16) {
    let port = common::free_port();
    let seed = common::Killed(
        pow_under_ulimit(
            limit,
            &[
                "seed",
                torrent.to_str().unwrap(),
                "--data",
                data.to_str().unwrap(),
            ],
        )
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap(),
    );
    common::wait_listening(port, "pow seed");
    (seed, port)
}

/// A dataset of 1,500 files, created, seeded and downloaded by pow under a soft limit of 256
/// open files (Debian's default is 1,024, with a far higher hard limit): pow lifts the soft
/// limit to the hard one and keeps at most a quarter of it of the content's files open (the
/// storage's file pool). Before either, `torrent create` failed with "Too many open files" at
/// the 250th or so.
#[test]
fn thousands_of_files_under_a_low_soft_limit_of_open_files() {
    let hard = Command::new("sh")
        .args(["-c", "ulimit -Hn"])
        .output()
        .unwrap();
    let hard = String::from_utf8_lossy(&hard.stdout).trim().to_string();
    if hard != "unlimited" && hard.parse::<u64>().unwrap_or(0) < 4096 {
        println!("SKIPPED: the hard limit of open files here is {hard}");
        return;
    }
    let work = common::TempDir::new("many-files");
    let data = work.path().join("data");
    let set = data.join("slices");
    std::fs::create_dir_all(&set).unwrap();
    for i in 0..1500 {
        std::fs::write(
            set.join(format!("slice-{i:04}.csv")),
            format!("{i},{}\n", i * i),
        )
        .unwrap();
    }
    let limited = |args: &[&str]| pow_under_ulimit("-Sn 256", args);
    let torrent = work.path().join("slices.torrent");
    let out = limited(&[
        "torrent",
        "create",
        set.to_str().unwrap(),
        "-o",
        torrent.to_str().unwrap(),
    ])
    .output()
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (_seed, port) = seed_under_ulimit("-Sn 256", &torrent, &data);
    let out_dir = work.path().join("out");
    let peer = format!("127.0.0.1:{port}");
    let out = limited(&[
        "download",
        torrent.to_str().unwrap(),
        "-o",
        out_dir.to_str().unwrap(),
    ])
    .args([
        "--peer",
        &peer,
        "--port",
        &common::free_port().to_string(),
        "--bind",
        "127.0.0.1",
    ])
    .output()
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for i in [0, 749, 1499] {
        let name = format!("slice-{i:04}.csv");
        assert_eq!(
            std::fs::read(out_dir.join("slices").join(&name)).unwrap(),
            std::fs::read(set.join(&name)).unwrap()
        );
    }
    println!("1,500 files created, seeded and downloaded under `ulimit -Sn 256` (hard: {hard})");
}

/// libtorrent downloads TORRENT into OUT from the seed at 127.0.0.1:SEED alone; exits 0 once
/// it is a seed, 1 after 90 s.
const LT_LEECH: &str = "import libtorrent as lt, sys, time
torrent, seed, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
s = lt.session({'listen_interfaces': '127.0.0.1:0', 'enable_dht': False, 'enable_lsd': False,
                'enable_upnp': False, 'enable_natpmp': False})
h = s.add_torrent({'ti': lt.torrent_info(torrent), 'save_path': out})
h.connect_peer(('127.0.0.1', seed))
t0 = time.time()
while not h.status().is_seeding and time.time() - t0 < 90:
    time.sleep(0.1)
st = h.status()
print('libtorrent', st.total_payload_download, 'bytes in %.1f s' % (time.time() - t0))
sys.exit(0 if st.is_seeding else 1)
";

/// A dataset of 3,000 files under a hard limit of 256 open files, the soft one the same (a
/// container's or a batch system's): `torrent create` gives mktorrent's info-hash, libtorrent
/// and pow download it from a `pow seed`, and `pow verify` checks it, each under that limit.
/// pow keeps at most a quarter of the limit open and closes the least recently used file to
/// open another. Before, every file stayed open, and `torrent create` failed with "Too many
/// open files" at about the 250th.
#[test]
fn more_files_than_the_process_may_open_are_created_seeded_downloaded_and_verified() {
    let work = common::TempDir::new("more-files-than-fds");
    let data = work.path().join("data");
    let set = data.join("slices");
    std::fs::create_dir_all(&set).unwrap();
    // 1 to 3,000 bytes each: a 32 KiB piece spans from 11 to hundreds of files.
    for i in 0..3000u64 {
        let length = (i * 1237 % 3000 + 1) as usize;
        std::fs::write(
            set.join(format!("slice-{i:04}.tif")),
            common::pseudo_random_bytes(length, i),
        )
        .unwrap();
    }
    run_in(
        &data,
        "mktorrent",
        &["-l", "15", "-o", "../mk.torrent", "slices"],
    );
    let mk = work.path().join("mk.torrent");
    let limited = |args: &[&str]| pow_under_ulimit("-n 256", args);
    let succeeded = |what: &str, out: std::process::Output| {
        assert!(
            out.status.success(),
            "{what}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let made = work.path().join("pow.torrent");
    succeeded(
        "torrent create",
        limited(&["torrent", "create", set.to_str().unwrap(), "-o"])
            .arg(&made)
            .args(["--piece-length", "32768"])
            .output()
            .unwrap(),
    );
    let info_hash = pow_show(&made)["info_hash"].clone();
    assert_eq!(
        info_hash,
        pow_show(&mk)["info_hash"],
        "mktorrent's info-hash"
    );

    let (_seed, port) = seed_under_ulimit("-n 256", &mk, &data);
    let lt_out = work.path().join("lt");
    let said = succeeded(
        "libtorrent from the pow seed",
        Command::new("/usr/bin/python3")
            .args(["-c", LT_LEECH])
            .arg(&mk)
            .arg(port.to_string())
            .arg(&lt_out)
            .output()
            .unwrap(),
    );
    let bytes = common::same_tree(&set, &lt_out.join("slices")).unwrap();

    let pow_out = work.path().join("pow");
    let peer = format!("127.0.0.1:{port}");
    succeeded(
        "pow download",
        limited(&[
            "download",
            mk.to_str().unwrap(),
            "-o",
            pow_out.to_str().unwrap(),
        ])
        .args(["--peer", &peer, "--port", &common::free_port().to_string()])
        .args(["--bind", "127.0.0.1"])
        .output()
        .unwrap(),
    );
    assert_eq!(
        common::same_tree(&set, &pow_out.join("slices")).unwrap(),
        bytes
    );
    let verified = succeeded(
        "pow verify",
        limited(&[
            "verify",
            mk.to_str().unwrap(),
            "--data",
            pow_out.to_str().unwrap(),
        ])
        .output()
        .unwrap(),
    );
    println!(
        "3,000 files ({bytes} bytes, info-hash {info_hash}) under `ulimit -n 256`: created, \
         seeded to {} and to pow, verified: {}",
        said.trim(),
        verified.trim()
    );
}

/// Names that share a prefix with a directory (`a.txt` and `a/x`: '.' sorts below '/') and
/// symlinks to a file out of the tree and to a directory in it: pow's torrent has mktorrent's
/// info-hash and transmission-create's file order (both order by the whole path as bytes and
/// follow links).
/// pow ordered by components (`a/x` first) and left links out, so the hashes differed.
#[test]
fn prefixed_names_and_symlinks_as_mktorrent_and_transmission_create_have_them() {
    let work = common::TempDir::new("create-order");
    let set = work.path().join("set");
    let other = work.path().join("other");
    for dir in [set.join("a"), set.join("a-b"), other.join("d")] {
        std::fs::create_dir_all(dir).unwrap();
    }
    for (path, text) in [
        ("set/a.txt", "1"),
        ("set/a/x", "22"),
        ("set/a-b/y", "333"),
        ("set/ab", "4444"),
        ("set/a b", "55555"),
        ("other/f", "linked file"),
        ("other/d/g", "linked directory"),
    ] {
        std::fs::write(work.path().join(path), text).unwrap();
    }
    std::os::unix::fs::symlink("../other/f", set.join("link-f")).unwrap();
    std::os::unix::fs::symlink("a-b", set.join("link-d")).unwrap();
    let run = |program: &str, args: &[&str]| run_in(work.path(), program, args);
    run("mktorrent", &["-l", "15", "-o", "mk.torrent", "set"]);
    run(
        "transmission-create",
        &["-s", "32", "-o", "tr.torrent", "set"],
    );
    // A link to nothing (an editor's lock file; mktorrent stops at it) is left out.
    std::os::unix::fs::symlink("someone@host.1234", set.join(".#ab")).unwrap();
    let pow_bin = common::pow_bin();
    run(
        pow_bin.to_str().unwrap(),
        &[
            "torrent",
            "create",
            "set",
            "-o",
            "pow.torrent",
            "--piece-length",
            "32768",
        ],
    );
    let [mk, tr, ours] =
        ["mk", "tr", "pow"].map(|t| pow_show(&work.path().join(format!("{t}.torrent"))));
    let paths = |j: &serde_json::Value| -> Vec<String> {
        j["files"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["path"].to_string())
            .collect()
    };
    println!(
        "pow {} mktorrent {}: {:?}",
        ours["info_hash"],
        mk["info_hash"],
        paths(&ours)
    );
    assert_eq!(ours["info_hash"], mk["info_hash"]);
    assert_eq!(paths(&ours), paths(&tr));
    assert_eq!(paths(&ours).len(), 7, "the dangling link is left out");
    // A directory link out of the shared one: pow could not seed from it, so an error.
    std::fs::remove_file(set.join("link-d")).unwrap();
    std::os::unix::fs::symlink("../other/d", set.join("link-d")).unwrap();
    let out = common::pow()
        .current_dir(work.path())
        .args(["torrent", "create", "set", "-o", "out.torrent"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("set/link-d: a symlink to a directory outside"),
        "{stderr}"
    );
    std::fs::remove_file(set.join("link-d")).unwrap();
    // A link back up the tree is an error that names it, not an endless walk.
    std::os::unix::fs::symlink("..", set.join("a").join("up")).unwrap();
    let out = common::pow()
        .current_dir(work.path())
        .args(["torrent", "create", "set", "-o", "loop.torrent"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("set/a/up: a symlink to a directory it is in"));
}

/// mktorrent's `-s` (source), `-n` (name) and `-p` (private): pow's `--source`, `-n` and `-p`
/// give the same info-hash, and `-n` names the default output. A tracker list with an empty
/// URL (`-t "a,"`) or a URL without a scheme is refused before anything is written; pow wrote
/// an empty URL into the torrent.
#[test]
fn source_name_and_private_as_mktorrent_has_them() {
    let work = common::TempDir::new("create-source");
    let set = work.path().join("set");
    std::fs::create_dir_all(set.join("d")).unwrap();
    std::fs::write(set.join("a.csv"), vec![7u8; 70_000]).unwrap();
    std::fs::write(set.join("d/b.txt"), "neurons").unwrap();
    let run = |program: &str, args: &[&str]| run_in(work.path(), program, args);
    let pow_bin = common::pow_bin();
    for target in ["set", "set/a.csv"] {
        let mk = format!("mk-{}.torrent", target.len());
        run(
            "mktorrent",
            &["-l", "15", "-s", "OpenWorm", "-n", "connectome v2", "-p"]
                .into_iter()
                .chain(["-o", &mk, target])
                .collect::<Vec<_>>(),
        );
        let ours = work.path().join("connectome v2.torrent");
        let _ = std::fs::remove_file(&ours);
        run(
            pow_bin.to_str().unwrap(),
            &[
                "torrent",
                "create",
                target,
                "--piece-length",
                "32768",
                "--source",
                "OpenWorm",
                "-n",
                "connectome v2",
                "-p",
            ],
        );
        let [mk, ours] = [work.path().join(&mk), ours].map(|t| pow_show(&t));
        println!(
            "{target}: pow {} mktorrent {}",
            ours["info_hash"], mk["info_hash"]
        );
        assert_eq!(ours["info_hash"], mk["info_hash"], "{target}");
        assert_eq!(ours["source"], "OpenWorm");
        assert_eq!(ours["name"], "connectome v2");
        assert_eq!(ours["private"], true);
    }
    for (trackers, bad) in [
        ("http://127.0.0.1:6969/announce,", "\"\""),
        ("127.0.0.1:6969/announce", "\"127.0.0.1:6969/announce\""),
    ] {
        let out = common::pow()
            .current_dir(work.path())
            .args([
                "torrent",
                "create",
                "set",
                "-o",
                "bad.torrent",
                "-t",
                trackers,
            ])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(
            stderr.contains(&format!("tracker {bad} is not a URL")),
            "{stderr}"
        );
        assert!(!work.path().join("bad.torrent").exists());
    }
    // A WebTorrent tracker goes in, with a warning: pow cannot announce to it, others can.
    let out = common::pow()
        .current_dir(work.path())
        .args(["torrent", "create", "set", "-o", "wss.torrent"])
        .args(["-t", "wss://tracker.example/announce"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("pow cannot announce to this tracker"),
        "{stderr}"
    );
    let shown = pow_show(&work.path().join("wss.torrent"));
    assert_eq!(shown["announce"], "wss://tracker.example/announce");
}

/// Runs the shell `command` on a terminal (`script` gives it one); it must succeed and draw a
/// `hashing` bar line containing `count`, which is returned.
fn hashing_line_on_a_terminal(command: &str, count: &str) -> String {
    let out = Command::new("script")
        .args(["-qec", command, "/dev/null"])
        .output()
        .unwrap();
    let shown = common::strip_ansi(&String::from_utf8_lossy(&out.stdout));
    assert!(out.status.success(), "{shown}");
    let line = shown
        .split(['\r', '\n'])
        .find(|l| l.starts_with("hashing ") && l.contains(count));
    line.unwrap_or_else(|| panic!("no hashing bar: {shown}"))
        .trim_end()
        .to_string()
}

/// On a terminal, `torrent create` and `publish` show how far hashing is, as
/// transmission-create does (a 16 GiB dataset takes minutes); they showed nothing until done.
/// `script` gives them a terminal.
#[test]
fn torrent_create_shows_hashing_progress_on_a_terminal() {
    let work = common::TempDir::new("create-progress");
    let data = work.path().join("big.bin");
    std::fs::write(&data, common::pseudo_random_bytes(64 << 20, 7)).unwrap();
    let command = format!(
        "'{}' torrent create '{}' -o '{}' --piece-length 16384",
        common::pow_bin().display(),
        data.display(),
        work.path().join("big.torrent").display()
    );
    println!("{}", hashing_line_on_a_terminal(&command, "/4096 pieces"));
    // `publish` too (its bar follows the slower of the piece hashes and the content's MD5).
    let pow_dir = work.path().join("pow");
    let init = common::pow()
        .arg("--pow-dir")
        .arg(&pow_dir)
        .arg("init")
        .output()
        .unwrap();
    assert!(init.status.success());
    let command = format!(
        "'{}' --pow-dir '{}' publish '{}' --no-seed --piece-length 16384 --torrent-store '{}'",
        common::pow_bin().display(),
        pow_dir.display(),
        data.display(),
        work.path().join("store").display()
    );
    hashing_line_on_a_terminal(&command, "/4096 pieces");
    // Not on a pipe.
    let piped = common::pow()
        .args(["torrent", "create", "--force", "--piece-length", "16384"])
        .arg(&data)
        .arg("-o")
        .arg(work.path().join("big.torrent"))
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&piped.stderr).contains("hashing"));
}
