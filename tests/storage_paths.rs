//! `pow verify` on data as researchers keep it: on a read-only mount, with a file longer than
//! the torrent says, with a large file linked in from elsewhere, with a program that is running,
//! with a file of someone else's it may not read; and `pow download` into a directory with a
//! dangling link at a file's path. (The storage's own tests cover writes through links and loops
//! of them, and that a long file keeps its tail.)

mod common;

use common::{
    create_torrent, first_stdout_line, free_port, pow, pow_bin, pseudo_random_bytes, text, Killed,
    TempDir, Tmpfs,
};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// `data/set/{a,b}` (300,000 and 200,000 bytes) and their torrent of 64 KiB pieces (8 pieces).
fn dataset(work: &Path, data: &Path) -> PathBuf {
    let set = data.join("set");
    std::fs::create_dir_all(&set).unwrap();
    std::fs::write(set.join("a"), pseudo_random_bytes(300_000, 1)).unwrap();
    std::fs::write(set.join("b"), pseudo_random_bytes(200_000, 2)).unwrap();
    let torrent = work.join("set.torrent");
    create_torrent(&set, &torrent, 65536);
    torrent
}

fn verify(torrent: &Path, data: &Path) -> Output {
    pow()
        .arg("verify")
        .arg(torrent)
        .arg("--data")
        .arg(data)
        .output()
        .unwrap()
}

fn assert_all_good(out: &Output, what: &str) {
    assert!(
        out.status.success() && text(&out.stdout).contains("set: 8/8 pieces good"),
        "{what}: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

#[test]
fn verify_finds_every_piece_of_read_only_data_good() {
    let work = TempDir::new("storage-read-only");
    let data = work.path().join("data");
    let disk = match Tmpfs::mount(&data, "4m") {
        Ok(disk) => disk,
        Err(e) => {
            println!("SKIPPED: cannot mount a tmpfs here ({e}); a read-only mount needs root");
            return;
        }
    };
    let torrent = dataset(work.path(), &data);
    let remounted = std::process::Command::new("mount")
        .args(["-o", "remount,ro"])
        .arg(&data)
        .status()
        .unwrap();
    assert!(remounted.success(), "remount read-only");
    assert_all_good(&verify(&torrent, &data), "read-only mount");
    drop(disk);
}

#[test]
fn verify_passes_a_file_longer_than_the_torrent_says_and_a_file_linked_in() {
    let work = TempDir::new("storage-long-linked");
    let data = work.path().join("data");
    let torrent = dataset(work.path(), &data);
    let b = data.join("set/b");
    let mut longer = std::fs::read(&b).unwrap();
    longer.extend_from_slice(b"not the torrent's");
    std::fs::write(&b, &longer).unwrap();
    assert_all_good(&verify(&torrent, &data), "b longer");
    assert_eq!(std::fs::read(&b).unwrap(), longer, "verify changes nothing");
    let elsewhere = work.path().join("elsewhere-a");
    std::fs::rename(data.join("set/a"), &elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, data.join("set/a")).unwrap();
    assert_all_good(&verify(&torrent, &data), "a linked in");
}

/// A program shipped with its dataset runs while the dataset is seeded: the seed kept the
/// files its start-up check opened, opened to write as well as read, and the kernel refused to
/// run the program ("Text file busy") until the seed stopped.
#[test]
fn a_datasets_program_runs_while_the_dataset_is_seeded() {
    let work = TempDir::new("storage-seeded-program");
    let set = work.path().join("data/set");
    std::fs::create_dir_all(&set).unwrap();
    let program = set.join("sleep");
    std::fs::copy("/bin/sleep", &program).unwrap();
    std::fs::write(set.join("notes"), pseudo_random_bytes(100_000, 3)).unwrap();
    let torrent = work.path().join("set.torrent");
    let pieces = create_torrent(&set, &torrent, 16384).geometry.piece_count();
    let (seed, started) = seed_json(pow(), &torrent, &work.path().join("data"));
    let _seed = Killed(seed);
    assert!(
        started.contains(&format!("\"pieces_good\":{pieces},")),
        "{started}"
    );
    // For a moment the exec may meet ETXTBSY from another test's child, forked while a copy
    // of its own was open to write (see below); a seed's handle would hold it for good.
    let ran = (0..100).find_map(|_| match Command::new(&program).arg("0").status() {
        Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) => {
            std::thread::sleep(std::time::Duration::from_millis(20));
            None
        }
        ran => Some(ran),
    });
    assert!(
        matches!(ran, Some(Ok(status)) if status.success()),
        "the program did not run while seeded: {ran:?} (None: \"Text file busy\" 100 times)"
    );
}

#[test]
fn verify_finds_every_piece_of_a_running_programs_file_good() {
    // A tool shipped with its dataset, running while the data is checked or seeded: the kernel
    // refuses to open it to write (ETXTBSY), which aborted the check ("Text file busy") when only
    // EACCES and EROFS fell back to reading.
    let work = TempDir::new("storage-running");
    let set = work.path().join("data/set");
    std::fs::create_dir_all(&set).unwrap();
    let program = set.join("sleep");
    std::fs::copy("/bin/sleep", &program).unwrap();
    std::fs::write(set.join("notes"), pseudo_random_bytes(100_000, 3)).unwrap();
    let torrent = work.path().join("set.torrent");
    let pieces = create_torrent(&set, &torrent, 16384).geometry.piece_count();
    // `spawn` returns once the exec is done: from then on the file is busy. The exec itself
    // may meet ETXTBSY for a moment: another test's child, forked while the copy was open to
    // write, holds that descriptor until its own exec.
    let spawned = (0..100).find_map(|_| match Command::new(&program).arg("30").spawn() {
        Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) => {
            std::thread::sleep(std::time::Duration::from_millis(20));
            None
        }
        spawned => Some(spawned),
    });
    let _running = Killed(spawned.expect("exec kept meeting ETXTBSY").unwrap());
    let busy = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&program);
    if busy.is_ok() {
        // A kernel that lets it be opened to write has nothing to fall back from.
        println!("SKIPPED: this kernel opens a running program's file to write (no ETXTBSY)");
        return;
    }
    let busy = busy.unwrap_err();
    assert_eq!(busy.raw_os_error(), Some(libc::ETXTBSY), "{busy}");
    let out = verify(&torrent, &work.path().join("data"));
    assert!(
        out.status.success()
            && text(&out.stdout).contains(&format!("set: {pieces}/{pieces} pieces good")),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

/// `pow seed --json` of `torrent` from `data` run by `pow` (a command of the pow binary) on a
/// free port; the process (stderr piped) and the line it started with.
fn seed_json(mut pow: Command, torrent: &Path, data: &Path) -> (std::process::Child, String) {
    let mut child = pow
        .arg("seed")
        .arg(torrent)
        .arg("--data")
        .arg(data)
        .args(["--port", &free_port().to_string()])
        .args(["--bind", "127.0.0.1", "--json"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = first_stdout_line(&mut child);
    (child, started)
}

/// `pow` as someone who may not read `file` (mode 000): root reads a file of any mode, so as
/// root it runs without the two capabilities that let it, after proof that this makes a real
/// EACCES here. None (the test skipped, and says why) where that cannot be had.
fn pow_that_may_not_read(file: &Path) -> Option<Command> {
    let as_anyone = |program: &Path| {
        let mut command = Command::new("setpriv");
        command
            .args([
                "--bounding-set=-dac_override,-dac_read_search",
                "--inh-caps=-all",
                "--",
            ])
            .arg(program);
        command
    };
    if std::fs::File::open(file).is_err() {
        return Some(pow());
    }
    match as_anyone(Path::new("cat")).arg(file).output() {
        Ok(cat)
            if !cat.status.success()
                && text(&cat.stderr).contains("Permission denied")
                && as_anyone(&pow_bin())
                    .arg("--version")
                    .output()
                    .is_ok_and(|o| o.status.success()) =>
        {
            Some(as_anyone(&pow_bin()))
        }
        Ok(cat) => {
            println!(
                "SKIPPED: without CAP_DAC_OVERRIDE, a mode-000 file is still read, or pow \
                 cannot be run ({})",
                text(&cat.stderr).trim()
            );
            None
        }
        Err(e) => {
            println!("SKIPPED: no setpriv to drop root's file capabilities ({e})");
            None
        }
    }
}

/// A seed of a shared directory holding a file it may not read saves its resume file (the
/// rest's pieces, synced), so the next start need not check the dataset again: the save
/// opened every file of the torrent to flush it and failed at that one ("cannot save the
/// resume file: .../a: Permission denied").
#[test]
fn a_seed_beside_a_file_it_may_not_read_saves_its_resume_file() {
    let work = TempDir::new("storage-unreadable-seed");
    let data = work.path().join("data");
    let torrent = dataset(work.path(), &data);
    let a = data.join("set/a");
    std::fs::set_permissions(&a, std::fs::Permissions::from_mode(0o000)).unwrap();
    let Some(seed) = pow_that_may_not_read(&a) else {
        return;
    };
    let (mut child, started) = seed_json(seed, &torrent, &data);
    // a is 300,000 bytes: pieces 0-4 (64 KiB each) lie in it, 5-7 in b alone.
    assert!(started.contains("\"pieces_good\":3"), "{started}");
    let resume_file = || {
        std::fs::read_dir(&data)
            .unwrap()
            .flatten()
            .find(|e| e.file_name().to_string_lossy().ends_with(".pow-resume"))
            .map(|e| std::fs::read_to_string(e.path()).unwrap())
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while resume_file().is_none() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let saved = resume_file();
    child.kill().unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = text(&out.stderr);
    assert!(!stderr.contains("cannot save"), "{stderr}");
    let saved = saved.unwrap_or_else(|| panic!("no resume file saved: {stderr}"));
    assert!(saved.contains("synced"), "{saved}");
}

#[test]
fn verify_counts_a_file_it_may_not_read_as_missing_and_says_so_once() {
    // Someone else's file in a shared directory: its pieces are not held, as if it were missing,
    // and a warning names it (it was a hard error, which stopped a seed of the rest).
    let work = TempDir::new("storage-unreadable");
    let data = work.path().join("data");
    let torrent = dataset(work.path(), &data);
    let a = data.join("set/a");
    std::fs::set_permissions(&a, std::fs::Permissions::from_mode(0o000)).unwrap();
    let Some(mut check) = pow_that_may_not_read(&a) else {
        return;
    };
    let out = check
        .arg("verify")
        .arg(&torrent)
        .arg("--data")
        .arg(&data)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    // a is 300,000 bytes: pieces 0-4 (64 KiB each) lie in it, 5-7 in b alone.
    assert!(
        !out.status.success() && stdout.contains("set: 3/8 pieces good"),
        "{stdout}{stderr}"
    );
    let warning = format!(
        "{}: Permission denied (os error 13); its pieces count as missing",
        a.display()
    );
    assert_eq!(stderr.matches(&warning).count(), 1, "{stderr}");
}

#[test]
fn a_download_stops_at_a_dangling_link_at_a_files_path_naming_it_and_where_it_leads() {
    // A link left at a file's path, to a file not there yet: following it would make the file
    // wherever it leads (here, in someone's ~/.ssh), so the download stops, as libtorrent and
    // Transmission stop a torrent at a file error, with the link and its target named (it said
    // "a symbolic link not followed to write (No such file or directory)").
    let work = TempDir::new("storage-dangling");
    let data = work.path().join("data");
    let torrent = dataset(work.path(), &data);
    let ssh = work.path().join("home/.ssh");
    std::fs::create_dir_all(&ssh).unwrap();
    let keys = ssh.join("authorized_keys");
    let out = work.path().join("out");
    std::fs::create_dir_all(out.join("set")).unwrap();
    // As the storage names it: its directory's real path.
    let out = out.canonicalize().unwrap();
    std::os::unix::fs::symlink(&keys, out.join("set/a")).unwrap();
    let port = common::free_port();
    let _seed = common::pow_seed(&torrent, &data, port, &[], Stdio::null());
    let o = common::pow_download(torrent.to_str().unwrap(), &out)
        .args(["--peer", &format!("127.0.0.1:{port}")])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = text(&o.stderr);
    assert!(!o.status.success(), "{stderr}");
    let named = format!(
        "{}: a symbolic link to {}, which does not exist: not followed to write",
        out.join("set/a").display(),
        keys.display()
    );
    assert!(stderr.contains(&named), "{stderr}");
    // Not told to free space, as it was for every failed write.
    assert!(
        stderr.contains("see to that and run again to resume") && !stderr.contains("free space"),
        "{stderr}"
    );
    assert!(!keys.exists(), "a file was made through the link");
    assert!(std::fs::symlink_metadata(out.join("set/a"))
        .unwrap()
        .file_type()
        .is_symlink());
}

/// A `--data` that is mistyped: `pow verify` and `pow seed` say so and create nothing (both
/// made the directory, with a resume file in it); `pow seed` of a directory that holds none of
/// the torrent's pieces (the content folder given instead of its parent) ends with an error
/// instead of serving nothing and ending with success.
#[test]
fn a_mistyped_data_directory_is_refused_not_made() {
    let work = TempDir::new("data-typo");
    let data = work.path().join("data");
    let torrent = dataset(work.path(), &data);
    let typo = work.path().join("dta");
    let out = verify(&torrent, &typo);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("no such directory"),
        "{}",
        text(&out.stderr)
    );
    let seed = |data: &Path| {
        pow()
            .arg("seed")
            .arg(&torrent)
            .arg("--data")
            .arg(data)
            .args(["--port", "0", "--bind", "127.0.0.1"])
            .output()
            .unwrap()
    };
    let out = seed(&typo);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(!typo.exists(), "the mistyped directory was made");
    // The content folder itself: nothing of the torrent at data/set/set/...
    let out = seed(&data.join("set"));
    let stderr = text(&out.stderr);
    println!("{}", stderr.trim());
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("nothing to seed: none of the 8 pieces"),
        "{stderr}"
    );
    // `pow download -o` a file: said at once, nothing fetched.
    let file = work.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    let out = pow()
        .arg("download")
        .arg(&torrent)
        .arg("-o")
        .arg(&file)
        .args(["--port", "0", "--bind", "127.0.0.1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("not a directory"),
        "{}",
        text(&out.stderr)
    );
}
