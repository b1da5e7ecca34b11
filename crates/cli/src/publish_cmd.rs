//! `pow publish FILE`: make the torrent (named by the content's MD5), put it in the torrent
//! store, add or update the data source that names it, and seed it until interrupted.

use crate::announce::SwarmArgs;
use clap::Args;
use pow_datasource::integrity::ContentDigester;
use pow_datasource::publish::{store_torrent, Stored};
use pow_metainfo::create::{check_options, create_with_progress, Content, CreateOptions};
use pow_metainfo::Metainfo;
use pow_picker::Picker;
use std::path::{Path, PathBuf};
use std::sync::Arc;

type CmdResult = Result<(), Box<dyn std::error::Error>>;

/// The options of [`SwarmArgs`] only the seeding after a publish uses (`--tracker` goes into
/// the torrent too).
const SEEDING_ONLY: [&str; 18] = [
    "port",
    "bind",
    "resume_every",
    "super_seed",
    "max_upload_rate",
    "no_pex",
    "dht",
    "dht_bootstrap",
    "dht_port",
    "dht_state",
    "encryption",
    "utp",
    "upload_slots",
    "choke_interval",
    "pex_interval",
    "idle_timeout",
    "snub_timeout",
    "announce_min",
];

#[derive(Args)]
pub struct PublishArgs {
    /// The file (typically a .zip) or directory to publish.
    file: PathBuf,
    /// Data source class of the record.
    #[arg(long = "type", default_value = "LocalFileDataSource")]
    kind: String,
    /// Key of the record (default: the file name, without extension).
    #[arg(long)]
    key: Option<String>,
    /// Another field of the record, FIELD=VALUE (e.g. description=...); repeatable.
    #[arg(long = "set", value_name = "FIELD=VALUE")]
    set: Vec<String>,
    /// Torrent store to write to (default: pow.toml's).
    #[arg(long)]
    torrent_store: Option<String>,
    /// Bytes per piece: a power of two from 16384 up to 128 MiB (default: picked from the size).
    #[arg(long, value_parser = crate::torrent_cmd::parse_piece_length)]
    piece_length: Option<u64>,
    /// Web seed URL for the torrent (BEP 19); repeatable.
    #[arg(long = "web-seed")]
    web_seeds: Vec<String>,
    /// Token of a `pow serve` torrent store (an http:// store is written by PUT).
    #[arg(long, env = "POW_STORE_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Publish only: do not seed afterwards (the options of seeding are refused with it:
    /// nothing would use them).
    #[arg(long, conflicts_with_all = SEEDING_ONLY)]
    no_seed: bool,
    /// Trackers (pow.toml's `trackers`, then each --tracker) go into the torrent.
    #[command(flatten)]
    swarm: SwarmArgs,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

/// The fields publish computes from the content and the torrent it makes (`file_name` only
/// for a file: a directory's record may name one of its files), and what `--type` and `--key`
/// give.
const NOT_SET: [&str; 7] = [
    "torrent_file_name",
    "info_hash",
    "md5",
    "sha256",
    "file_name",
    "type",
    "key",
];

pub fn publish(pow_dir: Option<&Path>, args: PublishArgs) -> CmdResult {
    // Before anything is hashed: a field publish computes, given again, made a record naming a
    // torrent or bytes other than those stored (and the plan then asked the store for them).
    let set_fields = args
        .set
        .iter()
        .map(|pair| {
            let (name, value) = pair
                .split_once('=')
                .ok_or_else(|| format!("--set {pair}: expected FIELD=VALUE"))?;
            let directory = name == "file_name" && args.file.is_dir();
            if NOT_SET.contains(&name) && !directory {
                return Err(match name {
                    "type" | "key" => format!("--set {name}: give it as --{name}"),
                    _ => format!(
                        "--set {name}: publish computes {name} from the content and its torrent"
                    ),
                });
            }
            Ok((name.to_string(), value.to_string()))
        })
        .collect::<Result<Vec<_>, String>>()?;
    let pow = crate::source_cmd::open(pow_dir)?;
    let store = pow.torrent_store(args.torrent_store.as_deref())?;
    let mut file = std::path::absolute(&args.file)?;
    if file.file_name().is_none() {
        // `..` or `.`: named by the directory they are (`pow publish ..` said "the file name
        // must be UTF-8"). Otherwise the name given is kept, a link's included.
        file = std::fs::canonicalize(&file).map_err(|e| format!("{}: {e}", file.display()))?;
    }
    let parent = file.parent().ok_or("cannot publish /")?.to_path_buf();
    let file_name = file
        .file_name()
        .ok_or("cannot publish /")?
        .to_str()
        .ok_or("the file name must be UTF-8")?
        .to_string();
    let mut trackers: Vec<Vec<String>> = pow
        .config()
        .trackers
        .iter()
        .map(|t| vec![t.clone()])
        .collect();
    trackers.extend(args.swarm.trackers.iter().map(|t| vec![t.clone()]));
    let key = match &args.key {
        Some(k) => k.clone(),
        None => file
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or(&file_name)
            .to_string(),
    };
    // The record is checked before the content is hashed and its torrent stored: a typo in
    // `--type` or a `--set` field was found only after an hour's hashing of a large dataset,
    // with the torrent already in the store and no record naming it. The hashes are not known
    // yet; any well-formed value stands in for them (no `also` rule joins them to a field).
    let mut stand_ins = vec![
        (
            "torrent_file_name".to_string(),
            format!("{:032}.torrent", 0),
        ),
        ("info_hash".to_string(), format!("{:040}", 0)),
        ("md5".to_string(), format!("{:032}", 0)),
        ("sha256".to_string(), format!("{:064}", 0)),
    ];
    if !file.is_dir() {
        stand_ins.push(("file_name".to_string(), file_name.clone()));
    }
    stand_ins.extend(set_fields.iter().cloned());
    pow.check_source(&args.kind, &key, &stand_ins)?;
    // Closed while the content is hashed (minutes for a large dataset): other pow commands
    // wait for the graph store only as long as a command writes to it.
    drop(pow);
    let options = CreateOptions {
        piece_length: args.piece_length,
        trackers,
        web_seeds: args.web_seeds.clone(),
        // No date: the same bytes with the same options give the same torrent.
        creation_date: None,
        // One SHA-1 thread is three times as fast as the MD5 thread beside it (below), so
        // more only take cores from it; and both read the content front to back, the second
        // from the page cache.
        threads: Some(1),
        ..CreateOptions::default()
    };
    // Before the digest thread below, which would read the whole file before the error.
    check_options(&options)?;
    crate::torrent_cmd::warn_of_trackers_pow_cannot_use(&options.trackers);
    let content = Content::scan(&file)?;
    // The content's MD5 and SHA-256 are computed beside the piece hashes, not after them: the
    // MD5 is the slowest of the three, and its thread alone then decides how long this takes.
    // The bar shows the slower of the two: pieces hashed, or pieces' worth digested.
    let piece_length = content.piece_length(&options);
    let hashed = std::sync::atomic::AtomicU32::new(0);
    let digested = std::sync::atomic::AtomicU64::new(0);
    let both = crate::seed_cmd::with_piece_bar(
        "hashing",
        content.piece_count(&options),
        args.json,
        |progress| {
            use std::sync::atomic::Ordering::Relaxed;
            let report = || {
                let digested = digested.load(Relaxed).div_ceil(piece_length);
                progress(hashed.load(Relaxed).min(digested as u32));
            };
            Ok::<_, std::convert::Infallible>(std::thread::scope(|scope| {
                let files = content
                    .files()
                    .map(|(path, length)| (path.to_path_buf(), length, false));
                let mut digester = ContentDigester::of_files(files, true);
                let total = content.total_length();
                let (digested, report) = (&digested, &report);
                let digests = scope.spawn(move || {
                    while digester.position() < total {
                        digester.advance_to((digester.position() + (64 << 20)).min(total))?;
                        digested.store(digester.position(), Relaxed);
                        report();
                    }
                    digester.finish()
                });
                let created = create_with_progress(&content, &options, &|n| {
                    hashed.fetch_max(n, Relaxed);
                    report();
                });
                (created, digests.join().expect("digest thread panicked"))
            }))
        },
    );
    let Ok((created, digests)) = both;
    let (created, digests) = (created?, digests?);
    let torrent_file_name = format!("{}.torrent", digests.md5);
    let stored = store_torrent(
        &store,
        &torrent_file_name,
        &created.bytes,
        args.token.as_deref(),
    )?;
    // Seed, and record, exactly what the store holds: an earlier publish of the same bytes
    // may have used other options (another piece length: another info-hash).
    let (metainfo, stored_bytes) = match stored {
        Stored::Written => (created.metainfo, created.bytes),
        Stored::Existing => {
            let bytes = store.fetch(&torrent_file_name)?;
            (Metainfo::from_bytes(&bytes)?, bytes)
        }
    };
    let metainfo = Arc::new(metainfo);
    if metainfo.name != file_name {
        // The same bytes, published before under another name (`pow serve` stores uploads
        // under names of its own): recorded and seeded as they are here, the record would name
        // a file its torrent does not have, and no piece would verify under the torrent's name.
        return Err(format!(
            "{} already holds {torrent_file_name} for these bytes, as `{}`, not `{file_name}`: \
             rename it to `{}` to publish it here (or publish to another store)",
            store.describe(),
            metainfo.name,
            metainfo.name
        )
        .into());
    }

    let mut fields = vec![
        ("torrent_file_name".to_string(), torrent_file_name.clone()),
        ("info_hash".to_string(), metainfo.info_hash.to_hex()),
        ("md5".to_string(), digests.md5.clone()),
        (
            "sha256".to_string(),
            digests.sha256.clone().unwrap_or_default(),
        ),
    ];
    if !metainfo.multi_file {
        fields.push(("file_name".to_string(), file_name.clone()));
    }
    fields.extend(set_fields);
    let pow = crate::source_cmd::open(pow_dir)?;
    let iri = pow.upsert_source(&args.kind, &key, &fields)?;
    // Cached as the store holds it, once the record naming it is written (a record refused
    // leaves the cache as it was): the plan below finds it there and does not ask the store,
    // which, stalling, would hold every other pow command up while the graph store is open.
    let pow_dir_path = crate::source_cmd::location(pow_dir).0;
    pow_datasource::loader::cache_torrent(&pow_dir_path, &torrent_file_name, &stored_bytes)?;
    let id = pow_datasource::schema::shorten(&iri);
    // The publisher already holds the verified content: record it, so `source load` here
    // returns at once.
    let store_for_plan = pow.torrent_store(args.torrent_store.as_deref())?;
    let plan = pow.plan_load(&id, &store_for_plan, Some(&parent))?;
    pow.record_load(&plan, digests.bytes)?;
    drop(pow);

    let summary = serde_json::json!({
        "id": id,
        "iri": iri,
        "torrent_file_name": torrent_file_name,
        "store": store.describe(),
        "stored": stored,
        "info_hash": metainfo.info_hash.to_hex(),
        "md5": digests.md5,
        "sha256": digests.sha256,
        "size": digests.bytes,
        "seeding": false,
    });
    let line = format!(
        "published {id}: {torrent_file_name} ({} in {}), info-hash {}, {} bytes",
        match stored {
            Stored::Written => "written",
            Stored::Existing => "already",
        },
        store.describe(),
        metainfo.info_hash.to_hex(),
        digests.bytes
    );
    let json = args.json;
    let print = move |summary: &serde_json::Value, seeding: Result<bool, &str>| {
        let mut summary = summary.clone();
        summary["seeding"] = seeding.unwrap_or(false).into();
        if let Err(why) = seeding {
            summary["seed_error"] = why.into();
        }
        match json {
            true => report_line!("{summary}"),
            false => report_line!("{line}"),
        }
    };
    if args.no_seed {
        print(&summary, Ok(false));
        return Ok(());
    }
    // The seed starts (its content checked, its port bound) before the summary is printed, so
    // the summary says whether it is seeding, not whether it was asked to. A signal during
    // the check still prints it; signals are counted on one stream for both phases, and one
    // summary is printed, whichever phase takes the signal.
    let runtime = crate::runtime::engine_runtime(crate::runtime::Work::Seed)?;
    let counted = runtime.block_on(async { crate::download_cmd::count_signals() })?;
    let summarized = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let interrupt = {
        let (summary, print, summarized) = (summary.clone(), print.clone(), summarized.clone());
        let counted = counted.clone();
        runtime.spawn(async move {
            crate::download_cmd::signals(counted, 1).await;
            if !summarized.swap(true, std::sync::atomic::Ordering::SeqCst) {
                print(&summary, Err("interrupted before the seed started"));
                eprintln!("pow: interrupted: published, not seeding");
                std::process::exit(130);
            }
        })
    };
    // The trackers are in the torrent now; do not announce to them twice.
    let swarm = SwarmArgs {
        trackers: Vec::new(),
        ..args.swarm
    };
    let seeding = Seeding::start(runtime, metainfo, &parent, swarm);
    interrupt.abort();
    if summarized.swap(true, std::sync::atomic::Ordering::SeqCst) {
        // The interrupt has printed the summary, and ends the process.
        loop {
            std::thread::park();
        }
    }
    match seeding {
        Ok(seeding) => {
            print(&summary, Ok(true));
            seeding.until_signal(counted)
        }
        Err(e) => {
            print(&summary, Err(&e.to_string()));
            Err(format!("published, but cannot seed it: {e}").into())
        }
    }
}

/// The published content, served.
struct Seeding {
    runtime: tokio::runtime::Runtime,
    torrent: pow_engine::Torrent,
    announcer: Option<crate::announce::Handle>,
    port: u16,
}

impl Seeding {
    /// Checks the content and starts serving it.
    fn start(
        runtime: tokio::runtime::Runtime,
        metainfo: Arc<Metainfo>,
        data: &Path,
        swarm: SwarmArgs,
    ) -> Result<Seeding, Box<dyn std::error::Error>> {
        let (storage, have) = crate::seed_cmd::check(&metainfo, data)?;
        let total = metainfo.geometry.piece_count();
        if have.count() != total {
            return Err(format!(
                "{}: only {} of {total} pieces verify; it changed while publishing?",
                data.display(),
                have.count()
            )
            .into());
        }
        let picker = Picker::new(metainfo.geometry.clone(), have);
        let (torrent, announcer) = runtime.block_on(swarm.join(storage, picker, None))?;
        let port = torrent.listen_addr().map_or(swarm.port, |addr| addr.port());
        Ok(Seeding {
            runtime,
            torrent,
            announcer,
            port,
        })
    }

    /// Serves until a signal is `counted` (one that came already counts).
    fn until_signal(self, counted: tokio::sync::watch::Receiver<u32>) -> CmdResult {
        eprintln!("seeding on port {}; Ctrl-C to stop", self.port);
        self.runtime.block_on(async {
            crate::download_cmd::signals(counted, 1).await;
            self.torrent.shutdown();
            if let Some(a) = self.announcer {
                a.stop().await;
            }
        });
        Ok(())
    }
}
