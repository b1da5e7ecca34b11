//! `pow source seed`: seed data sources loaded on this machine, so a researcher who fetched a
//! dataset passes it on. Each source's torrent (cached in `.pow/torrents/` by its load) and
//! the directory its load recorded; every one of them on one peer port, until interrupted.

use crate::announce::bytes_per_second;
use crate::multiseed::MultiSeed;
use clap::Args;
use pow_datasource::{LoadPlan, TorrentWanted};
use pow_engine::{RateLimit, SharedListener};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;

type CmdResult = Result<(), Box<dyn std::error::Error>>;

#[derive(Args)]
pub struct SourceSeedArgs {
    /// Data sources to seed (Type:key or IRI), each loaded on this machine by `pow source
    /// load`.
    ids: Vec<String>,
    /// Seed every data source loaded on this machine.
    #[arg(long, conflicts_with = "ids")]
    all: bool,
    /// Torrent store to fetch a torrent from when it is not cached (default: pow.toml's).
    #[arg(long)]
    torrent_store: Option<String>,
    /// Peer port every data source is seeded on (and announced).
    #[arg(long, default_value_t = 6881)]
    port: u16,
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0")]
    bind: IpAddr,
    /// Extra tracker announce URL for every data source (its own tier, after the torrent's);
    /// repeatable.
    #[arg(long = "tracker")]
    trackers: Vec<String>,
    /// Super-seed (BEP 16): each peer hears of a few pieces at a time.
    #[arg(long)]
    super_seed: bool,
    /// Upload at most this many bytes per second, all data sources together; a K, M or G
    /// suffix means KiB, MiB or GiB. Default: no limit.
    #[arg(long, value_name = "RATE", value_parser = bytes_per_second)]
    max_upload_rate: Option<u64>,
    /// Peers each data source uploads to at once, chosen again every 10 s, one of them in turn
    /// (see `pow seed --help`).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..))]
    upload_slots: u16,
    #[command(flatten)]
    dht: crate::dht_peers::DhtArgs,
    /// Message stream encryption of peer connections (see `pow seed --help`).
    #[arg(long, value_enum, default_value_t = crate::announce::EncryptionArg::Allow)]
    encryption: crate::announce::EncryptionArg,
    /// uTP (BEP 29) besides TCP (see `pow seed --help`).
    #[arg(long, value_enum, default_value_t = crate::announce::UtpArg::On, value_name = "MODE")]
    utp: crate::announce::UtpArg,
    /// Print one JSON line when seeding starts.
    #[arg(long)]
    json: bool,
}

/// A data source to seed (its `Type:key`) and its plan, or why it cannot be seeded.
type Planned = (String, Result<LoadPlan, String>);

/// The data sources to seed, resolved: a plan each, or why not. The graph store is closed
/// while the torrents are fetched (from the cache, or a torrent store that may be slow to
/// answer): other pow commands wait for it.
fn plans(
    pow_dir: Option<&Path>,
    args: &SourceSeedArgs,
) -> Result<Vec<Planned>, Box<dyn std::error::Error>> {
    let (wanted, store) = {
        let pow = crate::source_cmd::open(pow_dir)?;
        let store = pow.torrent_store(args.torrent_store.as_deref())?;
        let ids = if args.all {
            let loaded = pow.loaded_sources()?;
            if loaded.is_empty() {
                return Err(
                    "no data source has been loaded on this machine (pow source load ID)".into(),
                );
            }
            loaded
        } else if args.ids.is_empty() {
            return Err("name the data sources to seed, or --all for every one loaded here".into());
        } else {
            args.ids.clone()
        };
        let wanted: Vec<_> = ids
            .into_iter()
            .map(|id| {
                let loaded = (|| -> Result<TorrentWanted, String> {
                    let shown = pow.show(&id).map_err(|e| e.to_string())?;
                    if pow
                        .load_record(&shown.iri)
                        .map_err(|e| e.to_string())?
                        .is_none()
                    {
                        return Err(format!(
                            "not loaded on this machine (pow source load {} first)",
                            shown.id
                        ));
                    }
                    pow.torrent_wanted(&id).map_err(|e| e.to_string())
                })();
                (id, loaded)
            })
            .collect();
        (wanted, store)
    };
    let pow_dir_path = crate::source_cmd::location(pow_dir).0;
    let fetched: Vec<_> = wanted
        .into_iter()
        .map(|(id, loaded)| {
            let fetched = loaded.and_then(|wanted| {
                let torrent = wanted
                    .fetch(&pow_dir_path, &store)
                    .map_err(|e| e.to_string())?;
                Ok((wanted, torrent))
            });
            (id, fetched)
        })
        .collect();
    let pow = crate::source_cmd::open(pow_dir)?;
    let mut plans = Vec::new();
    for (id, fetched) in fetched {
        let plan = fetched.and_then(|(wanted, torrent)| {
            let plan = pow
                .plan_fetched(wanted, torrent, None)
                .map_err(|e| e.to_string())?;
            // Read now, not before the fetch: a load may have recorded other content meanwhile.
            let Some(record) = pow.load_record(&plan.iri).map_err(|e| e.to_string())? else {
                return Err(format!(
                    "not loaded on this machine (pow source load {} first)",
                    plan.id
                ));
            };
            let loaded_hash = record.info_hash;
            if plan.metainfo.info_hash.to_hex() != loaded_hash {
                return Err(format!(
                    "loaded from another torrent (info-hash {loaded_hash}) than {} now names (pow source load {} again)",
                    plan.torrent_file_name, plan.id
                ));
            }
            Ok(plan)
        });
        let shown_id = plan.as_ref().map_or(id, |p| p.id.clone());
        plans.push((shown_id, plan));
    }
    Ok(plans)
}

pub fn seed(pow_dir: Option<&Path>, args: SourceSeedArgs) -> CmdResult {
    let plans = plans(pow_dir, &args)?;
    let runtime = crate::runtime::engine_runtime(crate::runtime::Work::Seed)?;
    runtime.block_on(seed_async(plans, args))
}

async fn seed_async(plans: Vec<Planned>, args: SourceSeedArgs) -> CmdResult {
    let addr = SocketAddr::new(args.bind, args.port);
    let listener = SharedListener::bind(addr, args.encryption.engine(), args.utp.engine())
        .await
        .map_err(|e| format!("cannot listen for peers on {addr}: {e}"))?;
    if let Some(shared) = listener.take_shared_udp() {
        crate::dht_peers::offer_udp(shared);
    }
    let limit = args
        .max_upload_rate
        .map(|rate| Arc::new(RateLimit::new(rate)));
    let seeds = MultiSeed::new(listener, args.super_seed, limit, args.trackers.clone())
        .with_dht(args.dht.plan(args.bind, args.port))
        .with_upload_slots(args.upload_slots);
    let mut seeding = Vec::new();
    let mut failed = Vec::new();
    // Counted from before the first source's check: a signal then used to kill the process,
    // and the sources already announced never told their trackers `stopped`.
    let counted = crate::download_cmd::count_signals()?;
    for (id, plan) in plans {
        if *counted.borrow() > 0 {
            break;
        }
        let started = match plan {
            Ok(plan) => seeds
                .start(plan.metainfo.clone(), plan.base_dir.clone())
                .await
                .map(|()| plan),
            Err(why) => Err(why),
        };
        match started {
            Ok(plan) => {
                let directory = std::path::absolute(&plan.base_dir).unwrap_or(plan.base_dir);
                if !args.json {
                    eprintln!(
                        "seeding {id}: {} ({} pieces) from {}",
                        plan.metainfo.name,
                        plan.metainfo.geometry.piece_count(),
                        directory.display()
                    );
                }
                seeding.push(serde_json::json!({
                    "id": id,
                    "info_hash": plan.metainfo.info_hash.to_hex(),
                    "name": plan.metainfo.name,
                    "directory": directory.display().to_string(),
                }));
            }
            Err(why) => {
                eprintln!("pow: cannot seed {id}: {why}");
                failed.push(serde_json::json!({"id": id, "error": why}));
            }
        }
    }
    let interrupted = *counted.borrow() > 0;
    if seeding.is_empty() && !interrupted {
        return Err(format!("none of the {} data sources can be seeded", failed.len()).into());
    }
    if args.json {
        report_line!(
            "{}",
            serde_json::json!({"port": seeds.port(), "seeding": seeding, "failed": failed})
        );
    } else {
        eprintln!(
            "{} data sources on port {}; Ctrl-C to stop",
            seeding.len(),
            seeds.port()
        );
    }
    crate::download_cmd::signals(counted.clone(), 1).await;
    // A second signal ends it at once, without waiting for the trackers.
    let stopped = tokio::select! {
        stopped = seeds.stop() => stopped,
        () = crate::download_cmd::signals(counted, 2) => {
            return Err("stopped at once by a second signal".into())
        }
    };
    for (info_hash, uploaded) in stopped {
        let id = seeding
            .iter()
            .find(|s| s["info_hash"] == info_hash.as_str())
            .and_then(|s| s["id"].as_str())
            .unwrap_or(&info_hash);
        eprintln!("stopped {id}: {uploaded} bytes uploaded");
    }
    Ok(())
}
