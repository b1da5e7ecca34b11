//! `pow download`: fetch a torrent's content, every piece verified, then optionally seed.

use crate::announce::Found;
use crate::CmdResult;
use clap::Args;
use pow_engine::{Snapshot, Torrent};
use pow_metainfo::Metainfo;
use pow_picker::Picker;
use pow_storage::Resume;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Args)]
pub struct DownloadArgs {
    /// The .torrent file, or a magnet link (`magnet:?xt=urn:btih:...`): the torrent's info is
    /// then fetched from peers (BEP 9) and kept as `DIR/.<info-hash>.pow-metadata.torrent`.
    torrent: PathBuf,
    /// Directory to download into (the torrent's name is created inside it).
    #[arg(short, long)]
    output: PathBuf,
    #[command(flatten)]
    swarm: crate::announce::SwarmArgs,
    #[command(flatten)]
    leech: LeechArgs,
    /// Connect to this peer directly, no tracker needed; repeatable.
    #[arg(long = "peer", value_name = "IP:PORT", value_parser = crate::announce::peer_address)]
    peers: Vec<SocketAddr>,
    /// Download only files whose path inside the torrent matches this glob (`*`, `?`); repeatable.
    #[arg(long = "only")]
    only: Vec<String>,
    /// Keep seeding after the download completes, until interrupted.
    #[arg(long)]
    seed: bool,
    /// Print the final summary as JSON.
    #[arg(long)]
    json: bool,
}

/// How the commands that download (`download`, `source load`) fetch, besides the swarm.
#[derive(Args)]
pub struct LeechArgs {
    /// Download at most this many bytes per second, from all peers and web seeds together;
    /// a K, M or G suffix means KiB, MiB or GiB (as aria2's --max-download-limit). Default: no
    /// limit.
    #[arg(long, value_name = "RATE", value_parser = crate::announce::bytes_per_second)]
    pub max_download_rate: Option<u64>,
    /// Give up when no data has come from any peer or web seed for this many seconds: exit 1,
    /// the verified pieces kept for a rerun to resume. For scripts: a torrent or source
    /// nobody seeds, or one whose only tracker is dead, ends instead of waiting. Default: wait
    /// until complete or interrupted (as aria2's --bt-stop-timeout 0).
    #[arg(long, value_name = "SECS", value_parser = seconds)]
    pub stall_timeout: Option<Duration>,
    /// Seconds to wait for a torrent's metadata from peers: a magnet link's, or that of a
    /// data source whose torrent the store cannot give (fetched by the record's info_hash).
    #[arg(long, value_name = "SECS", default_value = "120", value_parser = seconds)]
    pub metadata_timeout: Duration,
}

pub fn run(args: DownloadArgs) -> CmdResult {
    let runtime = crate::runtime::engine_runtime(crate::runtime::Work::Download)?;
    runtime.block_on(download(args))
}

async fn download(args: DownloadArgs) -> CmdResult {
    let started = Instant::now();
    if args.output.exists() && !args.output.is_dir() {
        // Said before anything is fetched ("File exists (os error 17)" said it after).
        return Err(format!("-o {}: not a directory", args.output.display()).into());
    }
    // A magnet link's `x.pe` peers serve the download as well as its metadata.
    let mut metadata_seconds = None;
    // What the metadata phase found goes on into the session: its connection and addresses.
    let mut found = Found::default();
    let (metainfo, link_peers) = match args
        .torrent
        .to_str()
        .filter(|t| pow_metainfo::magnet::is_magnet_link(t))
    {
        Some(link) => (
            {
                let (metainfo, from_peers) = metainfo_of_magnet(&args, link).await?;
                found = from_peers;
                metadata_seconds = Some(started.elapsed().as_secs_f64());
                Arc::new(metainfo)
            },
            pow_metainfo::magnet::Magnet::parse(link)?.peers,
        ),
        None => (Arc::new(Metainfo::from_file(&args.torrent)?), Vec::new()),
    };
    let (storage, resume) = {
        let metainfo = metainfo.clone();
        let output = args.output.clone();
        tokio::task::spawn_blocking(move || {
            crate::seed_cmd::resume_or_check(&metainfo, &output, true).map_err(|e| e.to_string())
        })
        .await??
    };
    let resumed_pieces = resume.have.count();
    pow_engine::trace::event(&format!(
        "start {} {resumed_pieces} {}",
        resume.source.as_str(),
        hex::encode(resume.have.as_bytes())
    ));
    let mut picker = Picker::new(metainfo.geometry.clone(), resume.have.clone());
    let wanted = match args.only.is_empty() {
        true => None,
        false => Some(select_files(&metainfo, &args.only)?),
    };
    if let Some(wanted) = &wanted {
        picker.select_files(wanted);
    }
    storage.prepare_files(wanted.as_deref())?;

    let (torrent, announcer) = args
        .swarm
        .join_with(storage.clone(), picker, args.leech.max_download_rate, found)
        .await?;
    torrent.add_peers(args.peers.iter().chain(&link_peers).copied());
    // BEP 19: the torrent's `url-list` (for a magnet link, its `ws=` kept in the fetched file).
    torrent.add_web_seeds(metainfo.url_list.iter().cloned());

    let progress = Progress::new(&metainfo, args.json);
    // Counted from here to the end: with `--seed`, a SIGTERM while the resume file was saved
    // came between two listeners, and tokio keeps its handler installed, so it was ignored
    // and the seed went on.
    let counted = count_signals()?;
    let outcome = until_done(&torrent, &progress, args.leech.stall_timeout, &counted).await;
    // From here the next signal (the second, with `--seed` after a download: the first ends
    // the seeding) stops the process at once: what is left (saving the resume file, the
    // report, telling the tracker) may wait on a reader or a server that does not come.
    let seeding = outcome == Outcome::Complete && args.seed;
    let at_once = *counted.borrow() + 1 + u32::from(seeding);
    tokio::spawn(stop_at_once_on(counted.clone(), at_once));
    let snapshot = torrent.snapshot();
    progress.finish(&snapshot);
    // What it records is what the next start can skip checking. Unsynced, as every other
    // client leaves its data: the claim holds until the machine restarts (then the next start
    // checks everything), and syncing here cost a 256 MiB download about a fifth of its time.
    if let Err(e) = torrent.save_resume(pow_storage::Durability::ThisBoot).await {
        eprintln!("pow: warning: cannot save the resume file: {e}");
        storage.sync()?;
    }
    // BEP 3: no `completed` for what was complete when we started.
    if outcome == Outcome::Complete && snapshot.downloaded > 0 {
        if let Some(a) = &announcer {
            a.completed();
        }
    }
    let elapsed = started.elapsed();
    report(
        &args,
        &metainfo,
        &snapshot,
        &resume,
        (elapsed, metadata_seconds),
        &outcome,
        &torrent,
    );
    if outcome == Outcome::Complete && args.seed {
        eprintln!("seeding; Ctrl-C to stop");
        signals(counted, 1).await;
    }
    torrent.shutdown();
    if let Some(a) = announcer {
        a.stop().await;
    }
    match outcome.stopped() {
        None => Ok(()),
        Some((why, then)) => Err(format!(
            "{why} with {} of {} pieces verified (kept on disk; {then})",
            snapshot.pieces_have, snapshot.pieces_total
        )
        .into()),
    }
}

/// The torrent a magnet link names: from an earlier fetch kept in the output directory, or its
/// info dictionary fetched from peers found by the link's trackers and `x.pe` (and `--peer`),
/// checked against the info-hash.
async fn metainfo_of_magnet(
    args: &DownloadArgs,
    link: &str,
) -> Result<(Metainfo, Found), Box<dyn std::error::Error>> {
    let magnet = pow_metainfo::magnet::Magnet::parse(link)?;
    for warning in &magnet.warnings {
        eprintln!("pow: warning: magnet link: {warning}");
    }
    let info_hash = magnet.v1()?;
    // The torrent of this link: the dictionary fetched, with the link's own trackers, web
    // seeds and DHT nodes (`--tracker`s are added by the session). A kept dictionary gets this
    // link's first, then those kept with it: an earlier run's tracker may be dead now and this
    // link name a live one, or this link may name none and the earlier run's `--tracker` be
    // the only one.
    let dht_nodes = magnet.dht_node_names();
    let of_this_link = |info: &[u8], kept: Option<&Metainfo>| {
        let (kept_tiers, kept_seeds, kept_nodes) = match kept {
            Some(m) => (m.tracker_tiers(), &m.url_list[..], &m.dht_nodes[..]),
            None => (Vec::new(), &[][..], &[][..]),
        };
        let tiers = one_tier_each(magnet.trackers.iter().chain(kept_tiers.iter().flatten()));
        let mut web_seeds = magnet.web_seeds.clone();
        let mut nodes = dht_nodes.clone();
        for (all, more) in [(&mut web_seeds, kept_seeds), (&mut nodes, kept_nodes)] {
            for item in more {
                if !all.contains(item) {
                    all.push(item.clone());
                }
            }
        }
        Metainfo::from_bytes(&torrent_file(info, &tiers, &web_seeds, &nodes))
    };
    let kept = args
        .output
        .join(format!(".{}.pow-metadata.torrent", info_hash.to_hex()));
    if let Ok(metainfo) = Metainfo::from_file(&kept) {
        if metainfo.info_hash == info_hash {
            return Ok((
                of_this_link(&metainfo.info_bytes, Some(&metainfo))?,
                Found::default(),
            ));
        }
    }
    // A link may name a tracker twice (libtorrent keeps both when parsing, too).
    let tiers = one_tier_each(magnet.trackers.iter().chain(&args.swarm.trackers));
    let peers: Vec<SocketAddr> = magnet.peers.iter().chain(&args.peers).copied().collect();
    let wanted = ByInfoHash {
        info_hash,
        tiers,
        peers: &peers,
        web_seeds: &magnet.web_seeds,
        dht_nodes: &dht_nodes,
    };
    let (bytes, metainfo, found) =
        torrent_from_peers(wanted, &args.swarm, &args.leech, args.json).await?;
    std::fs::create_dir_all(&args.output)?;
    std::fs::write(&kept, &bytes)?;
    Ok((of_this_link(&metainfo.info_bytes, None)?, found))
}

/// Each tracker URL a tier of its own, in order, each once.
pub(crate) fn one_tier_each<'a>(urls: impl IntoIterator<Item = &'a String>) -> Vec<Vec<String>> {
    let mut tiers: Vec<Vec<String>> = Vec::new();
    for url in urls {
        if !tiers.iter().any(|tier| tier.contains(url)) {
            tiers.push(vec![url.clone()]);
        }
    }
    tiers
}

/// A torrent wanted by its info-hash: where to look for peers that have it, and what else
/// its .torrent file lists.
pub(crate) struct ByInfoHash<'a> {
    pub info_hash: pow_metainfo::InfoHash,
    /// Trackers to ask for peers, a tier each; the file lists them.
    pub tiers: Vec<Vec<String>>,
    pub peers: &'a [SocketAddr],
    pub web_seeds: &'a [String],
    /// DHT nodes to ask besides the routers (a magnet link's `dht=`), `host:port`.
    pub dht_nodes: &'a [String],
}

/// The .torrent of `wanted`: its info dictionary fetched (BEP 9) from the peers that its
/// trackers, its `peers` and the DHT (with --dht) name, and checked against the info-hash.
pub(crate) async fn torrent_from_peers(
    wanted: ByInfoHash<'_>,
    swarm: &crate::announce::SwarmArgs,
    leech: &LeechArgs,
    quiet: bool,
) -> Result<(Vec<u8>, Metainfo, Found), Box<dyn std::error::Error>> {
    let info_hash = wanted.info_hash;
    if wanted.tiers.is_empty() && wanted.peers.is_empty() && swarm.dht_plan().is_none() {
        return Err(format!(
            "nowhere to look for peers of {}: no tracker, no peer, and the DHT is off \
             (give --tracker URL, --peer IP:PORT or --dht)",
            info_hash.to_hex()
        )
        .into());
    }
    let (found, peers) = tokio::sync::mpsc::unbounded_channel();
    for peer in wanted.peers {
        let _ = found.send(*peer);
    }
    // Before the DHT node, so that the two share the peer port's UDP socket.
    let metadata_utp = metadata_utp(swarm).await;
    if let Some(plan) = swarm.dht_plan() {
        let found = found.clone();
        crate::dht_peers::start(
            &plan,
            info_hash.0,
            swarm.port,
            wanted.dht_nodes,
            move |peers| {
                for peer in peers {
                    let _ = found.send(peer);
                }
                // The metadata phase is over once nobody reads what is found.
                !found.is_closed()
            },
        )
        .await?;
    }
    let peer_id = crate::announce::peer_id();
    let announcer = crate::announce::start_for_peers(
        info_hash.0,
        wanted.tiers.clone(),
        peer_id,
        swarm.port,
        swarm.timing(),
        found,
    );
    if !quiet {
        eprintln!("fetching the metadata of {} from peers", info_hash.to_hex());
    }
    let started = Instant::now();
    let settings = pow_engine::metadata::FetchSettings {
        timeout: leech.metadata_timeout,
        encryption: swarm.encryption.engine(),
        limit: leech
            .max_download_rate
            .map(|rate| std::sync::Arc::new(pow_engine::RateLimit::new(rate))),
        utp: metadata_utp,
        listen: Some(SocketAddr::new(swarm.bind, swarm.port)),
        dht: swarm.dht_plan().is_some(),
    };
    let fetched = pow_engine::metadata::fetch_metadata(info_hash.0, peer_id, peers, settings).await;
    if let Some(a) = announcer {
        a.stop().await;
    }
    let pow_engine::metadata::Fetched {
        info,
        connections,
        peers,
    } = fetched?;
    let bytes = torrent_file(&info, &wanted.tiers, wanted.web_seeds, &[]);
    let metainfo = Metainfo::from_bytes(&bytes)?;
    if metainfo.info_hash != info_hash {
        return Err("the fetched metadata does not match the info-hash".into());
    }
    if !quiet {
        eprintln!(
            "metadata: {} ({} bytes of info) in {:.2} s",
            metainfo.name,
            info.len(),
            started.elapsed().as_secs_f64()
        );
    }
    Ok((bytes, metainfo, Found { connections, peers }))
}

/// A .torrent of a fetched info dictionary (kept byte for byte: its SHA-1 is the info-hash)
/// and the magnet link's trackers, DHT nodes (BEP 5 `nodes`) and web seeds.
fn torrent_file(
    info: &[u8],
    tiers: &[Vec<String>],
    web_seeds: &[String],
    dht_nodes: &[String],
) -> Vec<u8> {
    use pow_bencode::Value;
    let mut out = b"d".to_vec();
    if let Some(first) = tiers.iter().flatten().next() {
        Value::str("announce").encode_into(&mut out);
        Value::str(first).encode_into(&mut out);
        Value::str("announce-list").encode_into(&mut out);
        Value::List(
            tiers
                .iter()
                .map(|tier| Value::List(tier.iter().map(|t| Value::str(t)).collect()))
                .collect(),
        )
        .encode_into(&mut out);
    }
    Value::str("info").encode_into(&mut out);
    out.extend_from_slice(info);
    // Keys in order: "announce" < "announce-list" < "info" < "nodes" < "url-list".
    if !dht_nodes.is_empty() {
        Value::str("nodes").encode_into(&mut out);
        let nodes = dht_nodes.iter().filter_map(|name| {
            let (host, port) = name.rsplit_once(':')?;
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let port: u16 = port.parse().ok()?;
            Some(Value::List(vec![
                Value::str(host),
                Value::Int(i64::from(port)),
            ]))
        });
        Value::List(nodes.collect()).encode_into(&mut out);
    }
    if !web_seeds.is_empty() {
        Value::str("url-list").encode_into(&mut out);
        Value::List(web_seeds.iter().map(|u| Value::str(u)).collect()).encode_into(&mut out);
    }
    out.push(b'e');
    out
}

/// How a download ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    Complete,
    Interrupted,
    /// A disk write failed (the error names the path): full, read-only or gone. Every peer
    /// would meet it too, so the download cannot go on.
    Failed(pow_engine::DiskFailed),
    /// No payload came for the `--stall-timeout`, `after`; `peers` were connected then.
    Stalled {
        after: Duration,
        peers: usize,
    },
}

impl Outcome {
    /// Why the download stopped short, and what lets a rerun finish it; `None` if complete.
    pub(crate) fn stopped(&self) -> Option<(String, &'static str)> {
        let resume = "run again to resume";
        match self {
            Outcome::Complete => None,
            Outcome::Interrupted => Some(("interrupted".to_string(), resume)),
            Outcome::Failed(failed) if failed.disk_full => Some((
                format!("cannot {} {failed}; stopped", failed.doing),
                "free space and run again to resume",
            )),
            // A link not followed, a read-only file, a loop of links: space is not the cure.
            Outcome::Failed(error) => Some((
                format!("cannot {} {error}; stopped", error.doing),
                "see to that and run again to resume",
            )),
            Outcome::Stalled { after, peers } => Some((
                format!(
                    "no data for {} s (connected to {peers} peer{}); stopped",
                    after.as_secs_f64(),
                    if *peers == 1 { "" } else { "s" }
                ),
                resume,
            )),
        }
    }
}

/// Runs a download until every wanted piece is verified, a write fails, no data comes for
/// `stall_timeout`, or a SIGINT/SIGTERM is `counted` ([`count_signals`], made before: one
/// that came since counts), showing `progress` twice a second (`pow download` and `pow
/// source load`).
pub(crate) async fn until_done(
    torrent: &Torrent,
    progress: &Progress,
    stall_timeout: Option<Duration>,
    counted: &tokio::sync::watch::Receiver<u32>,
) -> Outcome {
    let mut ticker = tokio::time::interval(Duration::from_millis(500));
    let (mut downloaded, mut last_data) = (0, Instant::now());
    let shutdown = signals(counted.clone(), 1);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            // A download that is complete is reported so, even with a signal counted since.
            biased;
            _ = torrent.wait_complete() => return Outcome::Complete,
            error = torrent.wait_failed() => return Outcome::Failed(error),
            _ = ticker.tick() => {
                let snapshot = torrent.snapshot();
                progress.update(&snapshot);
                if snapshot.downloaded != downloaded {
                    (downloaded, last_data) = (snapshot.downloaded, Instant::now());
                } else if let Some(after) = stall_timeout.filter(|t| last_data.elapsed() >= *t) {
                    return Outcome::Stalled { after, peers: snapshot.peers };
                }
            }
            _ = &mut shutdown => return Outcome::Interrupted,
        }
    }
}

/// A `--stall-timeout` (or another wait): whole or fractional seconds, more than 0 and under
/// 1e9 (about 31 years). More fitted a `Duration` but not a deadline: `now + 1e19 s` panicked
/// (`pow serve --upload-idle-timeout 1e19`, meant as "never", failed every upload).
pub(crate) fn seconds(text: &str) -> Result<Duration, String> {
    match text.parse::<f64>() {
        Ok(secs) if secs >= 1e9 => Err(format!(
            "{text}: too many seconds to wait (under 1e9, about 31 years)"
        )),
        Ok(secs) if secs > 0.0 => Ok(Duration::from_secs_f64(secs)),
        _ => Err(format!("{text}: expected seconds, more than 0")),
    }
}

/// SIGINT and SIGTERM received so far (runs on the current runtime). Counted on one stream
/// from the start, so none is lost between the steps of a stop (`pow serve`: the first one
/// stops the server, the second stops it at once).
pub(crate) fn count_signals() -> std::io::Result<tokio::sync::watch::Receiver<u32>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let (count, counted) = tokio::sync::watch::channel(0);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
            count.send_modify(|n| *n += 1);
        }
    });
    Ok(counted)
}

/// Exits (130) once `n` signals have come.
async fn stop_at_once_on(counted: tokio::sync::watch::Receiver<u32>, n: u32) {
    signals(counted, n).await;
    eprintln!("pow: stopped at once");
    std::process::exit(130);
}

/// Resolves once `n` signals have come.
pub(crate) async fn signals(mut counted: tokio::sync::watch::Receiver<u32>, n: u32) {
    let _ = counted.wait_for(|&got| got >= n).await;
}

/// SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

fn report(
    args: &DownloadArgs,
    metainfo: &Metainfo,
    s: &Snapshot,
    resume: &Resume,
    (elapsed, metadata_seconds): (Duration, Option<f64>),
    outcome: &Outcome,
    torrent: &Torrent,
) {
    let secs = elapsed.as_secs_f64().max(0.001);
    let rate = s.downloaded as f64 / secs / (1024.0 * 1024.0);
    let resumed_pieces = resume.have.count();
    if args.json {
        let by_peer: Vec<_> = torrent
            .received_by_peer()
            .into_iter()
            .map(|(addr, bytes)| serde_json::json!({"peer": addr.to_string(), "bytes": bytes}))
            .collect();
        let to_peer: Vec<_> = torrent
            .sent_by_peer()
            .into_iter()
            .map(|(addr, bytes)| serde_json::json!({"peer": addr.to_string(), "bytes": bytes}))
            .collect();
        let by_web_seed: Vec<_> = torrent
            .received_by_web_seed()
            .into_iter()
            .map(|(url, bytes)| serde_json::json!({"url": url, "bytes": bytes}))
            .collect();
        let value = serde_json::json!({
            "info_hash": metainfo.info_hash.to_hex(),
            "name": metainfo.name,
            "complete": *outcome == Outcome::Complete,
            // Why it stopped short (null when complete): an interrupted run said null too.
            "error": match outcome {
                Outcome::Failed(failed) => Some(failed.error.clone()),
                _ => outcome.stopped().map(|(why, _)| why),
            },
            "pieces_verified": s.pieces_have,
            "pieces_total": s.pieces_total,
            "pieces_already_on_disk": resumed_pieces,
            "resume": resume.source.as_str(),
            "resume_rejected": resume.rejected,
            "downloaded": s.downloaded,
            "wasted": s.wasted,
            "uploaded": s.uploaded,
            "hash_failures": s.hash_failures,
            "have_all_received": s.have_all_received,
            "upload_only_received": s.upload_only_received,
            "rejects_received": s.rejects_received,
            "pieces_hashed_as_received": s.hashed_as_received,
            "writer_threads": s.writer_threads,
            "pex_sent": s.pex_sent,
            "pex_received": s.pex_received,
            "peers_from_pex": s.peers_from_pex,
            "peers_from_dht": crate::dht_peers::peers_found(),
            "connections": {
                "plaintext": s.connections_plaintext,
                "encrypted_handshake": s.connections_encrypted_handshake,
                "rc4": s.connections_rc4,
                "utp": s.connections_utp,
            },
            "seconds": secs,
            "metadata_seconds": metadata_seconds,
            "mib_per_s": rate,
            "received_by_peer": by_peer,
            "sent_to_peer": to_peer,
            "sent_to_other_peers": torrent.sent_to_others().1,
            "received_by_web_seed": by_web_seed,
            "web_seed_bytes": s.web_seed_bytes,
            "path": args.output.join(&metainfo.name).display().to_string(),
        });
        report_line!("{value}");
    } else {
        report_line!(
            "{}: {} {}/{} pieces verified, {} bytes downloaded in {:.1} s ({}), {} already on disk ({}), {} wasted{}",
            metainfo.name,
            if *outcome == Outcome::Complete { "complete," } else { "incomplete," },
            s.pieces_have,
            s.pieces_total,
            s.downloaded,
            secs,
            human_rate(s.downloaded as f64 / secs),
            resumed_pieces,
            resume.source.as_str(),
            s.wasted,
            if s.web_seed_bytes > 0 {
                format!(", {} from web seeds", s.web_seed_bytes)
            } else {
                String::new()
            },
        );
    }
}

/// A rate for people: MiB/s from 1 MiB/s up, KiB/s below (a rate-limited download at 32K
/// read "0.0 MiB/s").
fn human_rate(bytes_per_second: f64) -> String {
    const MIB: f64 = 1024.0 * 1024.0;
    if bytes_per_second >= MIB {
        format!("{:.1} MiB/s", bytes_per_second / MIB)
    } else {
        format!("{:.1} KiB/s", bytes_per_second / 1024.0)
    }
}

/// Indices of files whose path inside the torrent matches any of the globs.
fn select_files(metainfo: &Metainfo, globs: &[String]) -> Result<Vec<usize>, String> {
    let wanted: Vec<usize> = metainfo
        .files
        .iter()
        .enumerate()
        .filter(|(_, f)| {
            let inside = match metainfo.multi_file {
                true => f.path.as_str().split_once('/').map_or("", |(_, rest)| rest),
                false => f.path.as_str(),
            };
            globs
                .iter()
                .any(|g| glob_match(g.as_bytes(), inside.as_bytes()))
        })
        .map(|(i, _)| i)
        .collect();
    if wanted.is_empty() {
        return Err(format!("--only {}: no file matches", globs.join(" ")));
    }
    Ok(wanted)
}

/// `*` matches any run of characters (also `/`), `?` any one. Backtracks to the last `*`
/// only: time is at most pattern length x text length (a recursive match took exponential time
/// on `*a*a*a*a*b` over long paths).
fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    // The last `*` seen, and the text position its current match ends at.
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(&c) if c == b'?' || c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                // Let the last `*` take one more character, and try again after it.
                Some((star_p, star_t)) => {
                    star = Some((star_p, star_t + 1));
                    p = star_p + 1;
                    t = star_t + 1;
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// A progress bar on a terminal; nothing otherwise (the summary line says it all).
pub(crate) struct Progress {
    bar: Option<indicatif::ProgressBar>,
}

impl Progress {
    pub(crate) fn new(metainfo: &Metainfo, quiet: bool) -> Progress {
        if quiet || !std::io::stderr().is_terminal() {
            return Progress { bar: None };
        }
        let bar = indicatif::ProgressBar::new(metainfo.total_length());
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta} {msg}",
            )
            .expect("valid template"),
        );
        Progress { bar: Some(bar) }
    }

    pub(crate) fn update(&self, s: &Snapshot) {
        if let Some(bar) = &self.bar {
            bar.set_position(bar.length().unwrap_or(0).saturating_sub(s.left));
            if s.web_seeds > 0 {
                bar.set_message(format!("{} peers, {} web seeds", s.peers, s.web_seeds));
            } else {
                bar.set_message(format!("{} peers", s.peers));
            }
        }
    }

    pub(crate) fn finish(&self, s: &Snapshot) {
        if let Some(bar) = &self.bar {
            self.update(s);
            bar.finish_and_clear();
        }
    }
}

/// The uTP socket for the metadata phase: the peer port's (which the session uses after), or
/// one on any port; none with `--utp off`.
async fn metadata_utp(
    swarm: &crate::announce::SwarmArgs,
) -> Option<(pow_engine::Utp, std::sync::Arc<pow_utp::UtpSocket>)> {
    let mode = swarm.utp.engine();
    if mode == pow_engine::Utp::Off {
        return None;
    }
    if let Some(socket) = swarm.peer_port_utp().await {
        return Some((mode, socket));
    }
    match pow_utp::UtpSocket::bind(std::net::SocketAddr::new(swarm.bind, 0)).await {
        Ok(socket) => Some((mode, std::sync::Arc::new(socket))),
        Err(e) => {
            tracing::warn!("no uTP for the metadata: {e}");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{glob_match, human_rate, seconds};

    #[test]
    fn rates_below_a_mebibyte_per_second_read_in_kibibytes() {
        assert_eq!(human_rate(36_800.0), "35.9 KiB/s");
        assert_eq!(human_rate(3.5 * 1024.0 * 1024.0), "3.5 MiB/s");
    }

    /// Values a `Duration` cannot hold are refused, not a panic.
    #[test]
    fn stall_timeouts() {
        assert_eq!(seconds("2.5"), Ok(std::time::Duration::from_millis(2500)));
        assert!(seconds("0").is_err() && seconds("-1").is_err() && seconds("inf").is_err());
        assert!(seconds("1e20").unwrap_err().contains("too many seconds"));
        // A `Duration` holds it, a deadline does not.
        assert!(seconds("1e19").unwrap_err().contains("too many seconds"));
        assert!(seconds("999999999").is_ok());
    }

    #[test]
    fn globs() {
        assert!(glob_match(b"*.csv", b"a/b.csv"));
        assert!(glob_match(b"a/?.dat", b"a/x.dat"));
        assert!(!glob_match(b"a/?.dat", b"a/xy.dat"));
        assert!(glob_match(b"*", b""));
        assert!(!glob_match(b"b*", b"ab"));
        assert!(glob_match(b"a*b*c", b"a/xbyb/c"));
        assert!(!glob_match(b"a*b*c", b"a/xbyb/d"));
        assert!(glob_match(b"*?", b"x"));
        assert!(!glob_match(b"?", b""));
        assert!(glob_match(b"**", b""));
        // Exponential for a recursive matcher (2^30 paths); this is 30 x 2,000 steps.
        let long = vec![b'a'; 2000];
        assert!(!glob_match(
            &b"*a"
                .repeat(15)
                .into_iter()
                .chain(*b"*b")
                .collect::<Vec<_>>(),
            &long
        ));
    }
}
