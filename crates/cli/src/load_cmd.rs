//! `pow source load ID` (graph record -> verified files on disk), `pow source verify ID`
//! (the integrity checks alone) and `pow store list`.
//!
//! The graph store is closed while the download runs, so other `pow` commands can read it
//! meanwhile (RocksDB allows one process at a time); it is reopened to record the result.

use crate::announce::{Found, SwarmArgs};
use crate::download_cmd::{
    one_tier_each, torrent_from_peers, until_done, ByInfoHash, Outcome as Ended, Progress,
};
use clap::Args;
use pow_datasource::integrity::{Check, ContentDigester, Outcome};
use pow_datasource::loader::IntegrityReport;
use pow_datasource::{FetchedTorrent, LoadPlan, TorrentWanted};
use pow_engine::Snapshot;
use pow_metainfo::{Geometry, InfoHash};
use pow_picker::Picker;
use pow_storage::Storage;
use pow_wire::Bitfield;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{mpsc, Arc};
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
    #[command(flatten)]
    leech: crate::download_cmd::LeechArgs,
    /// Connect to this peer directly, besides the trackers; repeatable.
    #[arg(long = "peer", value_name = "IP:PORT", value_parser = crate::announce::peer_address)]
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

/// The load's plan. When the torrent store cannot give the torrent (down, or without it) and
/// the record names its info-hash, the torrent's info is fetched from peers instead (BEP 9, as
/// for a magnet link: the trackers of pow.toml and --tracker, --peer, the DHT with --dht), kept
/// in the torrent cache, and planned from there; the download then goes on with what that
/// found.
fn plan(
    pow_dir: Option<&Path>,
    args: &LoadArgs,
    runtime: &EngineRuntime,
) -> Result<(LoadPlan, Found), Box<dyn std::error::Error>> {
    // The project's graph store is closed while the torrent store or peers are asked, as
    // during the download: other commands wait for it (a minute at most), and a torrent store
    // that does not answer takes half a minute to give up on.
    let (wanted, store, trackers) = {
        let pow = crate::source_cmd::open(pow_dir)?;
        let trackers = pow.config().trackers.clone();
        let wanted = pow.torrent_wanted(&args.id)?;
        (
            wanted,
            pow.torrent_store(args.torrent_store.as_deref())?,
            trackers,
        )
    };
    let pow_dir_path = crate::source_cmd::location(pow_dir).0;
    let failure = match wanted.fetch(&pow_dir_path, &store) {
        Err(e) if e.store_failed() => e,
        fetched => {
            return Ok((
                plan_fetched(pow_dir, args, wanted, fetched?)?,
                Found::default(),
            ))
        }
    };
    let Some(info_hash) = wanted.torrent().info_hash() else {
        return Err(failure.into());
    };
    if !args.json {
        eprintln!("pow: {failure}; the record names info-hash {info_hash}");
    }
    let by_hash = ByInfoHash {
        info_hash: InfoHash::from_hex(info_hash).ok_or("bad info_hash")?,
        tiers: one_tier_each(trackers.iter().chain(&args.swarm.trackers)),
        peers: &args.peers,
        web_seeds: &[],
        dht_nodes: &[],
    };
    let (bytes, _, found) = runtime
        .get()?
        .block_on(torrent_from_peers(
            by_hash,
            &args.swarm,
            &args.leech,
            args.json,
        ))
        .map_err(|e| format!("{failure}, nor did peers give info-hash {info_hash}: {e}"))?;
    pow_datasource::loader::cache_torrent(&pow_dir_path, &wanted.torrent().file_name, &bytes)?;
    let fetched = wanted.fetch(&pow_dir_path, &store)?;
    let mut plan = plan_fetched(pow_dir, args, wanted, fetched)?;
    plan.torrent_from = "peers".into();
    Ok((plan, found))
}

/// [`PowDir::plan_load`](pow_datasource::PowDir::plan_load) with the graph store closed while
/// the torrent is fetched (from the cache, or a torrent store that may be slow to answer).
pub(crate) fn plan_store_closed(
    pow_dir: Option<&Path>,
    id: &str,
    torrent_store: Option<&str>,
    base_dir: Option<&Path>,
) -> Result<LoadPlan, Box<dyn std::error::Error>> {
    let (wanted, store) = {
        let pow = crate::source_cmd::open(pow_dir)?;
        (pow.torrent_wanted(id)?, pow.torrent_store(torrent_store)?)
    };
    let fetched = wanted.fetch(&crate::source_cmd::location(pow_dir).0, &store)?;
    let pow = crate::source_cmd::open(pow_dir)?;
    Ok(pow.plan_fetched(wanted, fetched, base_dir)?)
}

/// The load's plan for a torrent fetched, the graph store opened again for it.
fn plan_fetched(
    pow_dir: Option<&Path>,
    args: &LoadArgs,
    wanted: TorrentWanted,
    fetched: FetchedTorrent,
) -> Result<LoadPlan, Box<dyn std::error::Error>> {
    let pow = crate::source_cmd::open(pow_dir)?;
    let plan = pow.plan_fetched(wanted, fetched, args.base_dir.as_deref())?;
    pow.refuse_overwriting_others(&plan)?;
    Ok(plan)
}

/// Holds `<base_dir>/.pow-load.lock` (a `flock`, let go when the process ends however it
/// ends) for the rest of a load, so that loads into one base directory run one after another:
/// jobs of a cluster array that each load the same dataset into a shared directory would
/// otherwise all download it at once, and one could put an update in place while another
/// writes into it. A load that finds the lock held says so and waits; then the content is
/// usually there, verified, and the next load needs no network. The file stays (removing it
/// would let a waiter and a newcomer both lock). On a
/// file system without locks (`flock` unsupported) the load goes on unlocked, with a warning.
fn lock_base_dir(base_dir: &Path) -> Result<Option<std::fs::File>, Box<dyn std::error::Error>> {
    use std::io::{Read, Seek, Write};
    let io = |e: std::io::Error| format!("{}: {e}", base_dir.display());
    std::fs::create_dir_all(base_dir).map_err(io)?;
    let path = base_dir.join(".pow-load.lock");
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = match holder.trim() {
                "" => String::new(),
                pid => format!(" (pid {pid})"),
            };
            eprintln!(
                "pow: waiting for another pow process{holder} loading into {}",
                base_dir.display()
            );
            file.lock()
                .map_err(|e| format!("{}: {e}", path.display()))?;
        }
        Err(std::fs::TryLockError::Error(e)) => {
            eprintln!(
                "pow: warning: {}: {e}; loading without the lock that keeps loads into one \
                 directory from running at once",
                path.display()
            );
            return Ok(None);
        }
    }
    // Whose it is, for a load that waits on it (best effort).
    let _ = file.set_len(0).and_then(|()| {
        file.rewind()?;
        write!(file, "{}", std::process::id())
    });
    Ok(Some(file))
}

/// The engine's runtime, made when first needed. A load that fetches its torrent from peers
/// and then the content runs both on one: the peer port's uTP socket, bound once per process,
/// belongs to the runtime that bound it.
#[derive(Default)]
struct EngineRuntime(std::cell::OnceCell<tokio::runtime::Runtime>);

impl EngineRuntime {
    fn get(&self) -> std::io::Result<&tokio::runtime::Runtime> {
        if let Some(runtime) = self.0.get() {
            return Ok(runtime);
        }
        let runtime = crate::runtime::engine_runtime(crate::runtime::Work::Download)?;
        Ok(self.0.get_or_init(|| runtime))
    }
}

/// How the content got onto the disk in this run.
struct Transfer {
    pieces_on_disk_before: u32,
    pieces_verified: u32,
    snapshot: Option<Snapshot>,
    seconds: f64,
    /// How the transfer ended (`Complete` when nothing needed fetching).
    ended: Ended,
    /// The content digested while it downloaded (see [`DigestFollower`]), to be finished from
    /// disk; `None` when nothing was downloaded or the follower failed (then the checks read
    /// the whole content, and meet any error themselves).
    digester: Option<ContentDigester>,
    /// SIGINT/SIGTERM counted since the transfer began, when there was one.
    signals: Option<tokio::sync::watch::Receiver<u32>>,
}

pub fn load(pow_dir: Option<&Path>, args: LoadArgs) -> CmdResult {
    let started = Instant::now();
    let runtime = EngineRuntime::default();
    let (mut plan, mut found) = plan(pow_dir, &args, &runtime)?;
    let _lock = loop {
        let lock = lock_base_dir(&plan.base_dir)?;
        // Planned again under the lock, whether it was waited for or not: what another load
        // did before this one held it (an update put in place, content verified and recorded,
        // another directory recorded) decides this one's plan, and that load may have ended
        // between this one's plan and its lock. The torrent is cached by now: no peer is
        // asked again, and the peers the first plan found are kept.
        let locked_dir = plan.base_dir.clone();
        let (mut again, found_again) = self::plan(pow_dir, &args, &runtime)?;
        if again.torrent_from == "cache" && again.metainfo.info_hash == plan.metainfo.info_hash {
            // Read back from where the first plan put it: that one says where it came from.
            again.torrent_from = std::mem::take(&mut plan.torrent_from);
        }
        plan = again;
        if !found_again.connections.is_empty() || !found_again.peers.is_empty() {
            found = found_again;
        }
        if plan.base_dir == locked_dir {
            break lock;
        }
    };
    let staged = plan.staged();
    // What this run downloads and checks: for an update, the new content beside the old.
    let target = staged.as_ref().unwrap_or(&plan);
    if let Some(staged) = &staged {
        let copied = plan.reuse_unchanged_files(staged)?;
        if !args.json {
            eprintln!(
                "pow: {} replaces the content verified in {} (info-hash {}): it is loaded into \
                 {} ({copied} bytes of unchanged files copied there) and takes its place once \
                 verified",
                plan.metainfo.info_hash.to_hex(),
                plan.base_dir.display(),
                plan.replaces.as_deref().unwrap_or_default(),
                staged.base_dir.display(),
            );
        }
    }
    let transfer = fetch_content(target, &args, &runtime, found)?;
    if let Some((why, then)) = transfer.ended.stopped() {
        return Err(format!(
            "{}: {why} with {} of {} pieces verified (kept in {}; {then})",
            plan.id,
            transfer.pieces_verified,
            plan.metainfo.geometry.piece_count(),
            target.base_dir.display(),
        )
        .into());
    }
    let hashing = Instant::now();
    let digested_during_transfer = transfer.digester.as_ref().map_or(0, |d| d.position());
    // Tokio keeps its signal handlers installed once the transfer's are made: unless still
    // counted, a Ctrl-C during the checks (a whole MD5 pass at worst), or one since the
    // transfer ended, would be ignored. They only read; stopping them leaves nothing half done.
    let counted = transfer.signals.clone();
    let interrupt = runtime.0.get().map(|runtime| {
        runtime.spawn(async move {
            match counted {
                Some(counted) => crate::download_cmd::signals(counted, 1).await,
                None => crate::download_cmd::shutdown_signal().await,
            }
            eprintln!("pow: interrupted during the integrity checks; nothing recorded");
            std::process::exit(130);
        })
    });
    let report = target.check_integrity(transfer.pieces_verified, transfer.digester);
    if let Some(interrupt) = interrupt {
        interrupt.abort();
    }
    let digest_seconds = hashing.elapsed().as_secs_f64();
    let named_other_content = report.checks.iter().any(|c| {
        c.name == "md5-torrent-name" && c.outcome == pow_datasource::integrity::Outcome::Failed
    });
    if named_other_content {
        // The torrent delivered bytes its name does not name: it is wrong, and kept in the
        // cache it was used again by every later load, after the store was put right.
        let cached = crate::source_cmd::location(pow_dir)
            .0
            .join(pow_datasource::loader::TORRENT_CACHE_DIR)
            .join(&plan.torrent_file_name);
        match std::fs::remove_file(&cached) {
            Ok(()) => eprintln!(
                "pow: {} dropped from the torrent cache: the next load asks the store again",
                plan.torrent_file_name
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => eprintln!("pow: warning: {}: {e}", cached.display()),
        }
    }
    let bytes = plan.metainfo.total_length();
    if report.failure().is_none() {
        let pow = crate::source_cmd::open(pow_dir)?;
        // Another source may have claimed the path during a long download.
        pow.refuse_overwriting_others(&plan)?;
        if let Some(staged) = &staged {
            // Warned of even with --json: what is left needs a person.
            for left in plan.install_update(staged)? {
                eprintln!(
                    "pow: warning: not moved into the new content, left in {}: {left}",
                    staged.base_dir.display()
                );
            }
        }
        pow.record_load(&plan, bytes)?;
        // Closed before the earlier version is removed (a whole dataset's files, on a network
        // file system minutes): other pow commands wait for the graph store meanwhile.
        drop(pow);
        if let Some(staged) = &staged {
            if let Err(e) = plan.remove_update(staged) {
                let cause = std::error::Error::source(&e)
                    .map(|c| format!(": {c}"))
                    .unwrap_or_default();
                eprintln!("pow: warning: the update is in place, but not cleaned up: {e}{cause}");
            }
        }
        match plan.remove_abandoned_updates() {
            Ok((removed, kept)) => {
                if !args.json {
                    for path in removed {
                        eprintln!(
                            "pow: removed {}, left by an earlier update of this source",
                            path.display()
                        );
                    }
                }
                for path in kept {
                    eprintln!(
                        "pow: warning: kept {}: an update stopped there while it moved files \
                         that were not its content back into it; see to them",
                        path.display()
                    );
                }
            }
            Err(e) => eprintln!("pow: warning: an abandoned update is not removed: {e}"),
        }
    }
    let directory = match report.failure() {
        None => &plan.base_dir,
        Some(_) => &target.base_dir,
    };
    let directory = std::path::absolute(directory).unwrap_or(directory.clone());
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
            "digested_during_transfer": digested_during_transfer,
            "digest_seconds": digest_seconds,
            "seconds": started.elapsed().as_secs_f64(),
            "checks": report.checks,
        });
        report_line!("{value}");
    } else {
        print_checks(&report.checks);
        if report.failure().is_none() {
            report_line!("{}", directory.display());
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
fn fetch_content(
    plan: &LoadPlan,
    args: &LoadArgs,
    runtime: &EngineRuntime,
    found: Found,
) -> Result<Transfer, Box<dyn std::error::Error>> {
    let started = Instant::now();
    let Checked {
        storage,
        have,
        digester,
    } = check_and_digest(plan)?;
    let total = plan.metainfo.geometry.piece_count();
    let before = have.count();
    // Empty files hold no piece, so a check never misses them and no write makes them: one
    // lost since the last load is made here, or every load would fail on it.
    storage.prepare_files(None)?;
    if before == total {
        return Ok(Transfer {
            pieces_on_disk_before: before,
            pieces_verified: before,
            snapshot: None,
            seconds: started.elapsed().as_secs_f64(),
            ended: Ended::Complete,
            digester,
            signals: None,
        });
    }
    let (snapshot, ended, follower, counted) = runtime.get()?.block_on(async {
        let mut picker = Picker::new(plan.metainfo.geometry.clone(), have);
        picker.prefer_in_order(in_order_window(plan.metainfo.geometry.piece_length()));
        let (torrent, announcer) = args
            .swarm
            .join_with(storage.clone(), picker, args.leech.max_download_rate, found)
            .await?;
        let follower = {
            let torrent = torrent.clone();
            DigestFollower::start(
                move |next| torrent.readable_until(next),
                plan.metainfo.geometry.clone(),
                digester.unwrap_or_else(|| plan.content_digester()),
            )
        };
        torrent.add_peers(args.peers.iter().copied());
        let progress = Progress::new(&plan.metainfo, args.json);
        let counted = crate::download_cmd::count_signals()?;
        let ended = until_done(&torrent, &progress, args.leech.stall_timeout, &counted).await;
        let snapshot = torrent.snapshot();
        progress.finish(&snapshot);
        // BEP 3: no `completed` for what was complete when we started.
        if matches!(ended, Ended::Complete) && snapshot.downloaded > 0 {
            if let Some(a) = &announcer {
                a.completed();
            }
        }
        torrent.shutdown();
        if let Some(a) = announcer {
            a.stop().await;
        }
        Ok::<_, std::io::Error>((snapshot, ended, follower, counted))
    })?;
    let digester = follower.stop();
    // After a failed write the error to report is that one, not what a sync then meets.
    if let Err(e) = storage.sync() {
        if !matches!(ended, Ended::Failed(_)) {
            return Err(e.into());
        }
    }
    Ok(Transfer {
        pieces_on_disk_before: before,
        pieces_verified: snapshot.pieces_have,
        snapshot: Some(snapshot),
        seconds: started.elapsed().as_secs_f64(),
        ended,
        digester,
        signals: Some(counted),
    })
}

/// Pieces past the first missing one that the picker takes in order during a load: 16 MiB of
/// them, at least 16; twice what one peer may have in flight (a pipeline of 500 blocks), so
/// one peer's pieces arrive in order. A wider window cost swarms more of the seed's upload (8
/// pow leechers from one seed, 3 runs each: a 64 MiB window 1.28-1.34x the payload, 16 MiB
/// 1.21-1.33x, rarest first 1.04-1.31x) and digested no sooner from one seed.
fn in_order_window(piece_length: u32) -> u32 {
    ((16u32 << 20) / piece_length.max(1)).max(16)
}

/// The content's MD5 (and SHA-256) computed while it downloads, by a thread that reads each
/// stretch of pieces once they are verified and written, front to back. Without it the
/// digest is a second pass over the whole content after the transfer (as long as the transfer
/// itself at 1 GiB on this project's test machine); with the picker taking pieces in order,
/// little of it is left then. What it read was verified and is never written again, so the
/// digest is the one a pass after the download would compute.
struct DigestFollower {
    stop: mpsc::Sender<()>,
    thread: std::thread::JoinHandle<std::io::Result<ContentDigester>>,
}

impl DigestFollower {
    /// How long the follower waits between looks at the verified pieces.
    const POLL: Duration = Duration::from_millis(20);

    /// Follows `readable_until(next)`: the first piece at or after `next` that cannot be read
    /// yet (every piece before it is verified and on disk).
    fn start(
        readable_until: impl Fn(u32) -> u32 + Send + 'static,
        geometry: Geometry,
        mut digester: ContentDigester,
    ) -> DigestFollower {
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let count = geometry.piece_count();
            let mut next = 0;
            loop {
                let until = readable_until(next);
                if until > next {
                    let end = geometry
                        .piece(until)
                        .map_or(geometry.total_length(), |p| geometry.piece_offset(p));
                    digester.advance_to(end)?;
                    next = until;
                }
                if until == count {
                    return Ok(digester);
                }
                match stopped.recv_timeout(Self::POLL) {
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                    _ => return Ok(digester),
                }
            }
        });
        DigestFollower { stop, thread }
    }

    /// Stops following; the digester as far as it got, or `None` if it failed.
    fn stop(self) -> Option<ContentDigester> {
        let _ = self.stop.send(());
        match self.thread.join() {
            Ok(Ok(digester)) => Some(digester),
            Ok(Err(e)) => {
                tracing::debug!("content digest during the download stopped: {e}");
                None
            }
            Err(_) => None,
        }
    }
}

/// Checks what is on disk while a [`DigestFollower`] digests the pieces the check has found
/// good from the start, each just after the check read it: a second load or `source verify`
/// reads the content once, not twice, and the MD5 overlaps the SHA-1 check. Returns the
/// digester as far as it got (`None` if it failed: the checks then read the whole content).
fn check_and_digest(plan: &LoadPlan) -> Result<Checked, Box<dyn std::error::Error>> {
    let verified_prefix = Arc::new(AtomicU32::new(0));
    let follower = {
        let verified_prefix = verified_prefix.clone();
        DigestFollower::start(
            move |_| verified_prefix.load(Ordering::Acquire),
            plan.metainfo.geometry.clone(),
            plan.content_digester(),
        )
    };
    let (storage, have) =
        crate::seed_cmd::check_in_order(&plan.metainfo, &plan.base_dir, &verified_prefix)?;
    Ok(Checked {
        storage,
        have,
        digester: follower.stop(),
    })
}

/// What [`check_and_digest`] found.
struct Checked {
    storage: Arc<Storage>,
    have: Bitfield,
    digester: Option<ContentDigester>,
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
    let plan = plan_store_closed(
        pow_dir,
        &args.id,
        args.torrent_store.as_deref(),
        args.base_dir.as_deref(),
    )?;
    if let Some(earlier) = &plan.replaces {
        return Err(format!(
            "{}: the record names content not loaded yet (info-hash {}); {} holds the content \
             loaded before (info-hash {earlier}) until `pow source load {}` puts the new in \
             its place",
            plan.id,
            plan.metainfo.info_hash.to_hex(),
            plan.base_dir.display(),
            plan.id
        )
        .into());
    }
    // Checking creates the directory (and empty files) to read from: a mistyped --base-dir
    // would be made and reported as 0 pieces verified.
    if !plan.base_dir.is_dir() {
        return Err(format!(
            "{}: no directory {} to verify (has it been loaded? `pow source load {}`)",
            plan.id,
            plan.base_dir.display(),
            plan.id
        )
        .into());
    }
    let Checked { have, digester, .. } = check_and_digest(&plan)?;
    let report: IntegrityReport = plan.check_integrity(have.count(), digester);
    let directory = std::path::absolute(&plan.base_dir).unwrap_or(plan.base_dir.clone());
    if args.json {
        let value = serde_json::json!({
            "id": plan.id,
            "ok": report.failure().is_none(),
            "directory": directory.display().to_string(),
            "info_hash": plan.metainfo.info_hash.to_hex(),
            "checks": report.checks,
        });
        report_line!("{value}");
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
        report_line!("{}", serde_json::to_string_pretty(&entries)?);
    } else {
        for e in entries {
            report_line!(
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
