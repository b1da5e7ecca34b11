//! `pow source load ID` (graph record -> verified files on disk), `pow source verify ID`
//! (the integrity checks alone) and `pow store list`.
//!
//! The graph store is closed while the download runs, so other `pow` commands can read it
//! meanwhile (RocksDB allows one process at a time); it is reopened to record the result.

use crate::announce::SwarmArgs;
use crate::download_cmd::{shutdown_signal, Progress};
use clap::Args;
use pow_datasource::integrity::{Check, Outcome};
use pow_datasource::loader::IntegrityReport;
use pow_datasource::LoadPlan;
use pow_engine::Snapshot;
use pow_picker::Picker;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

type CmdResult = Result<(), Box<dyn std::error::Error>>;

/// `pow source load`.
#[derive(Args)]
pub struct LoadArgs {
    /// The data source: Type:key or its IRI.
    id: String,
    /// Directory to put the content in (default: a previous load's, else
    /// .pow/data_source_data/BitTorrentDataSourceDirLoader/<key>/).
    #[arg(long)]
    base_dir: Option<PathBuf>,
    /// Torrent store to fetch from: a directory or an http:// or https:// URL (default:
    /// pow.toml's).
    #[arg(long)]
    torrent_store: Option<String>,
    #[command(flatten)]
    swarm: SwarmArgs,
    /// Download at most this many bytes per second, from all peers and web seeds together;
    /// a K, M or G suffix means KiB, MiB or GiB (as aria2's --max-download-limit). Default: no
    /// limit.
    #[arg(long, value_name = "RATE", value_parser = crate::announce::bytes_per_second)]
    max_download_rate: Option<u64>,
    /// Connect to this peer directly, besides the trackers; repeatable.
    #[arg(long = "peer")]
    peers: Vec<SocketAddr>,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

/// `pow source verify`.
#[derive(Args)]
pub struct SourceVerifyArgs {
    /// The data source: Type:key or its IRI.
    id: String,
    /// Directory holding the content (default: where it was loaded).
    #[arg(long)]
    base_dir: Option<PathBuf>,
    /// Torrent store to fetch the torrent from if it is not cached.
    #[arg(long)]
    torrent_store: Option<String>,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

/// `pow store ...`.
#[derive(clap::Subcommand)]
pub enum StoreCommand {
    /// List the torrents a store offers (its index.json, or a directory's .torrent files).
    List {
        /// The store: a directory or an http:// URL (default: pow.toml's).
        #[arg(long)]
        torrent_store: Option<String>,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
}

/// How the content got onto the disk in this run.
struct Transfer {
    pieces_on_disk_before: u32,
    pieces_verified: u32,
    snapshot: Option<Snapshot>,
    seconds: f64,
    interrupted: bool,
}

pub fn load(pow_dir: Option<&Path>, args: LoadArgs) -> CmdResult {
    let started = Instant::now();
    let plan = {
        let pow = crate::source_cmd::open(pow_dir)?;
        let store = pow.torrent_store(args.torrent_store.as_deref())?;
        pow.plan_load(&args.id, &store, args.base_dir.as_deref())?
    };
    let transfer = fetch_content(&plan, &args)?;
    if transfer.interrupted {
        return Err(format!(
            "{}: interrupted with {} of {} pieces verified (kept in {}; run again to resume)",
            plan.id,
            transfer.pieces_verified,
            plan.metainfo.geometry.piece_count(),
            plan.base_dir.display()
        )
        .into());
    }
    let hashing = Instant::now();
    let report = plan.check_integrity(transfer.pieces_verified);
    let digest_seconds = hashing.elapsed().as_secs_f64();
    let bytes = plan.metainfo.total_length();
    if report.failure().is_none() {
        let pow = crate::source_cmd::open(pow_dir)?;
        pow.record_load(&plan, bytes)?;
    }
    let directory = std::path::absolute(&plan.base_dir).unwrap_or(plan.base_dir.clone());
    if args.json {
        let s = transfer.snapshot.as_ref();
        let value = serde_json::json!({
            "id": plan.id,
            "iri": plan.iri,
            "ok": report.failure().is_none(),
            "directory": directory.display().to_string(),
            "content": directory.join(&plan.metainfo.name).display().to_string(),
            "info_hash": plan.metainfo.info_hash.to_hex(),
            "torrent_file_name": plan.torrent_file_name,
            "torrent_from": plan.torrent_from,
            "bytes": bytes,
            "pieces_total": plan.metainfo.geometry.piece_count(),
            "pieces_already_on_disk": transfer.pieces_on_disk_before,
            "network": s.is_some(),
            "downloaded": s.map_or(0, |s| s.downloaded),
            "hash_failures": s.map_or(0, |s| s.hash_failures),
            "transfer_seconds": transfer.seconds,
            "digest_seconds": digest_seconds,
            "seconds": started.elapsed().as_secs_f64(),
            "checks": report.checks,
        });
        println!("{value}");
    } else {
        print_checks(&report.checks);
        if report.failure().is_none() {
            println!("{}", directory.display());
        }
    }
    match report.failure() {
        None => Ok(()),
        Some(check) => Err(format!(
            "{}: integrity check {} failed: {} (verified pieces kept in {})",
            plan.id,
            check.name,
            check.detail,
            directory.display()
        )
        .into()),
    }
}

/// Checks what is on disk; downloads the rest by BitTorrent if anything is missing.
fn fetch_content(plan: &LoadPlan, args: &LoadArgs) -> Result<Transfer, Box<dyn std::error::Error>> {
    let started = Instant::now();
    let (storage, have) = crate::seed_cmd::check(&plan.metainfo, &plan.base_dir)?;
    let total = plan.metainfo.geometry.piece_count();
    let before = have.count();
    if before == total {
        return Ok(Transfer {
            pieces_on_disk_before: before,
            pieces_verified: before,
            snapshot: None,
            seconds: started.elapsed().as_secs_f64(),
            interrupted: false,
        });
    }
    storage.prepare_files(None)?;
    let runtime = crate::runtime::engine_runtime(crate::runtime::Work::Download)?;
    let (snapshot, interrupted) = runtime.block_on(async {
        let picker = Picker::new(plan.metainfo.geometry.clone(), have);
        let (torrent, announcer) = args
            .swarm
            .join(storage.clone(), picker, args.max_download_rate)
            .await?;
        torrent.add_peers(args.peers.iter().copied());
        let progress = Progress::new(&plan.metainfo, args.json);
        let mut ticker = tokio::time::interval(Duration::from_millis(500));
        let interrupted = loop {
            tokio::select! {
                _ = torrent.wait_complete() => break false,
                _ = ticker.tick() => progress.update(&torrent.snapshot()),
                _ = shutdown_signal() => break true,
            }
        };
        let snapshot = torrent.snapshot();
        progress.finish(&snapshot);
        // BEP 3: no `completed` for what was complete when we started.
        if !interrupted && snapshot.downloaded > 0 {
            if let Some(a) = &announcer {
                a.completed();
            }
        }
        torrent.shutdown();
        if let Some(a) = announcer {
            a.stop().await;
        }
        Ok::<_, std::io::Error>((snapshot, interrupted))
    })?;
    storage.sync()?;
    Ok(Transfer {
        pieces_on_disk_before: before,
        pieces_verified: snapshot.pieces_have,
        snapshot: Some(snapshot),
        seconds: started.elapsed().as_secs_f64(),
        interrupted,
    })
}

fn print_checks(checks: &[Check]) {
    for check in checks {
        let mark = match check.outcome {
            Outcome::Passed => "ok  ",
            Outcome::Failed => "FAIL",
            Outcome::Skipped => "skip",
        };
        eprintln!("{mark} {:<17} {}", check.name, check.detail);
    }
}

pub fn verify(pow_dir: Option<&Path>, args: SourceVerifyArgs) -> CmdResult {
    let plan = {
        let pow = crate::source_cmd::open(pow_dir)?;
        let store = pow.torrent_store(args.torrent_store.as_deref())?;
        pow.plan_load(&args.id, &store, args.base_dir.as_deref())?
    };
    let (_, have) = crate::seed_cmd::check(&plan.metainfo, &plan.base_dir)?;
    let report: IntegrityReport = plan.check_integrity(have.count());
    let directory = std::path::absolute(&plan.base_dir).unwrap_or(plan.base_dir.clone());
    if args.json {
        let value = serde_json::json!({
            "id": plan.id,
            "ok": report.failure().is_none(),
            "directory": directory.display().to_string(),
            "info_hash": plan.metainfo.info_hash.to_hex(),
            "checks": report.checks,
        });
        println!("{value}");
    } else {
        print_checks(&report.checks);
    }
    match report.failure() {
        None => Ok(()),
        Some(check) => Err(format!(
            "{}: integrity check {} failed: {}",
            plan.id, check.name, check.detail
        )
        .into()),
    }
}

pub fn store(pow_dir: Option<&Path>, cmd: StoreCommand) -> CmdResult {
    let StoreCommand::List {
        torrent_store,
        json,
    } = cmd;
    let store = match &torrent_store {
        Some(spec) => pow_datasource::TorrentStore::parse(spec, Path::new("."))?,
        None => crate::source_cmd::open(pow_dir)?.torrent_store(None)?,
    };
    let entries = store.list()?;
    if json {
        println!("{}", serde_json::to_string_pretty(&entries)?);
    } else {
        for e in entries {
            println!(
                "{}\t{}\t{}\t{}",
                e.name,
                e.size.map_or("-".into(), |s| s.to_string()),
                e.info_hash.as_deref().unwrap_or("-"),
                e.description.as_deref().unwrap_or("")
            );
        }
    }
    Ok(())
}
