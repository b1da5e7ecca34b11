//! Seeding and choking issue, acceptance line 4: `pow download` killed with SIGKILL at 10
//! moments and restarted each time ends with the right bytes, never claims a piece it does not
//! have, and never fetches a verified piece again.
//!
//! A killed process prints nothing, so pow runs with `POW_TRACE_VERIFIED` (the engine's test
//! hook): each run appends `start <source> <count> <have hex>` and one `verified <piece>` line
//! per verified piece. After each kill the test reads the resume file itself and checks every
//! piece it claims against the payload.

mod common;

use common::trace::{parse_trace, resume_claims, Rng};
use common::{same_tree, Lab};
use std::collections::HashSet;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

const KILLS: usize = 10;
/// Fixed, so a failure can be replayed.
const RNG_SEED: u64 = 0x5eed_2026_1125;

/// Pieces whose bytes on disk are the payload's.
fn correct_pieces(expected: &[u8], target: &Path, piece: usize) -> HashSet<u32> {
    let actual = std::fs::read(target).unwrap_or_default();
    expected
        .chunks(piece)
        .enumerate()
        .filter(|(i, want)| actual.get(i * piece..i * piece + want.len()) == Some(*want))
        .map(|(i, _)| i as u32)
        .collect()
}

#[test]
fn kill_9_at_ten_moments_then_resume() {
    let lab = Lab::new("crash");
    let (data, torrent) = lab.payload("256M", &[]);
    let t = torrent.to_str().unwrap();
    let dir = data.parent().unwrap().to_str().unwrap();
    let (ok, _, err) = lab.script("seed.sh", &["aria2", t, dir]);
    assert!(ok, "{err}");
    let metainfo = pow_metainfo::Metainfo::from_file(&torrent).unwrap();
    let piece_len = metainfo.geometry.piece_length() as usize;
    let pieces = metainfo.geometry.piece_count();
    let expected = std::fs::read(&data).unwrap();
    let out = lab.work.path().join("out-crash");
    let target = out.join(data.file_name().unwrap());
    let trace = lab.work.path().join("verified.trace");
    let resume_file = out.join(format!(".{}.pow-resume", metainfo.info_hash.to_hex()));
    let run = || -> Child {
        common::pow()
            .args(["download", t, "-o"])
            .arg(&out)
            .args(["--port", "51205", "--bind", "127.0.0.1", "--json"])
            .args(["--peer", "127.0.0.1:51101"])
            // Saves several times a second, so kills land before, during and after saves.
            .args(["--resume-every", "0.2"])
            .env("POW_TRACE_VERIFIED", &trace)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };

    // Kill points: random fractions of the payload verified so far, increasing, so every run
    // gets somewhere; then a random few milliseconds more, to land anywhere in the pipeline.
    let mut rng = Rng(RNG_SEED);
    let mut targets: Vec<f64> = (0..KILLS).map(|_| 0.03 + 0.9 * rng.unit()).collect();
    targets.sort_by(f64::total_cmp);
    println!("rng seed {RNG_SEED:#x}; kill at fractions {targets:.3?}");
    let started = Instant::now();
    // What the resume file claimed when each run started (checked against the trace below).
    let mut claimed_before: Vec<HashSet<u32>> = vec![HashSet::new()];
    for (kill, fraction) in targets.iter().enumerate() {
        let mut child = run();
        let deadline = Instant::now() + Duration::from_secs(60);
        let goal = (fraction * f64::from(pieces)) as usize;
        // Each run gets at least a few pieces of its own, however close the targets are.
        let at_least = 2 + (rng.next() % 24) as usize;
        loop {
            let runs = parse_trace(&trace);
            let started_here = runs.len() > kill;
            let (on_disk, here) = runs
                .last()
                .map_or((0, 0), |r| (r.start.len(), r.verified.len()));
            if started_here && on_disk + here >= goal.max(on_disk + at_least) {
                break;
            }
            assert!(
                child.try_wait().unwrap().is_none(),
                "run {kill} ended before its kill point"
            );
            assert!(Instant::now() < deadline, "run {kill} made no progress");
            std::thread::sleep(Duration::from_millis(2));
        }
        // At most 5 ms: aria2 seeds at up to ~700 MiB/s here, and 30 ms overshot kill points
        // by up to 80 pieces, close to the ~120 the last killed run had left to fetch.
        std::thread::sleep(Duration::from_micros(rng.next() % 5_000));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let runs = parse_trace(&trace);
        let this = runs.last().unwrap();
        let claims = resume_claims(&resume_file);
        let correct = correct_pieces(&expected, &target, piece_len);
        let wrong: Vec<_> = claims.difference(&correct).collect();
        assert!(
            wrong.is_empty(),
            "after kill {kill} the resume file claims pieces that are not on disk: {wrong:?}"
        );
        println!(
            "kill {:>2} at {:>5.1}%: run started from {:<10} with {:>4} pieces, verified {:>4} pieces ({:>9} bytes); after the kill {:>4} pieces correct on disk, resume file claims {:>4}",
            kill + 1,
            fraction * 100.0,
            this.source,
            this.start.len(),
            this.verified.len(),
            this.verified.len() * piece_len,
            correct.len(),
            claims.len(),
        );
        claimed_before.push(claims);
    }

    let last = run().wait_with_output().unwrap();
    assert!(last.status.success(), "the last run did not complete");
    let summary: serde_json::Value = serde_json::from_slice(&last.stdout).unwrap();
    let bytes = same_tree(&data, &target).unwrap();
    let runs = parse_trace(&trace);
    assert_eq!(runs.len(), KILLS + 1);
    println!(
        "last run: from {} ({}) with {} pieces, fetched {} bytes, verified {} pieces; {bytes} bytes match; {:.1} s in all",
        summary["resume"],
        summary["resume_rejected"],
        summary["pieces_already_on_disk"],
        summary["downloaded"],
        runs.last().unwrap().verified.len(),
        started.elapsed().as_secs_f64()
    );

    // No piece known good in an earlier run is fetched again: a full check finds every one
    // (their bytes are on disk); a start from the resume file may lose only pieces verified
    // after its last save, and must start from exactly what the file claimed.
    let mut known: HashSet<u32> = HashSet::new();
    let mut refetched = 0usize;
    let mut total_verified = 0usize;
    for (i, r) in runs.iter().enumerate() {
        let overlap: Vec<_> = r.verified.iter().filter(|p| r.start.contains(p)).collect();
        assert!(
            overlap.is_empty(),
            "run {i} verified pieces it started with: {overlap:?}"
        );
        let lost: HashSet<u32> = known.difference(&r.start).copied().collect();
        if r.source == "file" {
            assert_eq!(
                r.start, claimed_before[i],
                "run {i} started from another set"
            );
            assert!(
                lost.len() <= 32,
                "run {i}: {} verified pieces were not in the resume file",
                lost.len()
            );
            refetched += lost.len();
        } else {
            assert!(
                lost.is_empty(),
                "run {i} ({}) lost pieces: {lost:?}",
                r.source
            );
        }
        total_verified += r.verified.len();
        known = r.start.iter().chain(&r.verified).copied().collect();
    }
    assert_eq!(known.len(), pieces as usize);
    println!(
        "pieces verified over all {} runs: {total_verified} of {pieces}; fetched again: {refetched} (verified after a resume file's last save); found whole on disk after a kill before their verification finished: {}",
        runs.len(),
        (pieces as usize + refetched).saturating_sub(total_verified)
    );
    assert!(total_verified <= pieces as usize + refetched);

    // Complete and stopped cleanly: the next start trusts the resume file and fetches nothing.
    let again = run().wait_with_output().unwrap();
    assert!(again.status.success());
    let again: serde_json::Value = serde_json::from_slice(&again.stdout).unwrap();
    println!(
        "one more run: from {}, {} pieces on disk, fetched {} bytes",
        again["resume"], again["pieces_already_on_disk"], again["downloaded"]
    );
    assert_eq!(again["resume"], "file", "{again}");
    assert_eq!(again["downloaded"], 0);
    let fetched_last = summary["downloaded"].as_u64().unwrap();
    let left_last = (u64::from(pieces) - summary["pieces_already_on_disk"].as_u64().unwrap())
        * piece_len as u64;
    assert!(fetched_last <= left_last, "{fetched_last} > {left_last}");
}
