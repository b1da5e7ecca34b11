//! `pow serve`: the upload server (crates/server), with the engine seeding every dataset on one
//! shared peer port, and a tracker (embedded, unless `--tracker` names one to use instead).
//! Started again on the same data directory, it seeds every stored dataset again.

use crate::multiseed::{MultiSeed, Status};
use clap::Args;
use pow_engine::SharedListener;
use pow_metainfo::create::{check_options, CreateOptions};
use pow_metainfo::Metainfo;
use pow_server::{Library, SeedFuture, SeedStatus, Seeder, ServeConfig};
use pow_tracker::server::{ServerConfig, TrackerServer};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

type CmdResult = Result<(), Box<dyn std::error::Error>>;

#[derive(Args)]
pub struct ServeArgs {
    /// Address of the web page and HTTP API.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// The server's directory: uploads, content, and the torrent store (`DIR/torrents`).
    /// Default: `serve` in the project directory (--pow-dir or POW_DIR, else ./.pow).
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// Largest dataset a researcher may upload to this server (the web page's or the API's
    /// zip), in bytes. Not a bandwidth limit: that is --max-upload-rate.
    #[arg(long, value_name = "BYTES", default_value_t = 16 << 30)]
    max_upload_size: u64,
    /// Uploads received at once; one more is refused (503 with Retry-After) before it is read.
    #[arg(long, value_name = "N", default_value_t = pow_server::DEFAULT_MAX_CONCURRENT_UPLOADS,
          value_parser = clap::value_parser!(u16).range(1..))]
    max_concurrent_uploads: u16,
    /// An upload that sends nothing for this many seconds is dropped (408), with its part file.
    #[arg(long, value_name = "SECS", default_value = "60", value_parser = crate::download_cmd::seconds)]
    upload_idle_timeout: std::time::Duration,
    /// Bytes a second an upload must average after its first --upload-idle-timeout, or it is
    /// dropped (408): a client sending a byte now and then cannot hold an upload slot.
    #[arg(long, value_name = "RATE", default_value = "8K", value_parser = crate::announce::bytes_per_second)]
    upload_min_rate: u64,
    /// Peer port every dataset is seeded on (TCP and uTP), on --listen's IP address, as are
    /// the DHT node and the embedded tracker unless --tracker-listen says otherwise.
    #[arg(long, default_value_t = 6881)]
    peer_port: u16,
    /// Address of the embedded tracker (HTTP and UDP); default: the --listen host, port 6969.
    /// New torrents name it by this address, or by --public-url's host if this is 0.0.0.0.
    #[arg(long, conflicts_with = "trackers")]
    tracker_listen: Option<SocketAddr>,
    /// Announce URL of a running tracker to put in new torrents instead of running one;
    /// repeatable.
    #[arg(long = "tracker")]
    trackers: Vec<String>,
    /// Token that allows `PUT /torrents/<md5>.torrent` (`Authorization: Bearer TOKEN`).
    #[arg(long, env = "POW_SERVE_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Base URL others reach this server at, put into new torrents as their web seed
    /// (default: http://LISTEN, unless it is an unspecified address such as 0.0.0.0).
    #[arg(long)]
    public_url: Option<String>,
    /// Super-seed every dataset (BEP 16): each peer hears of a few pieces at a time, and of
    /// more once those are seen at other peers, so the leechers of a new upload pass it on
    /// among themselves and it leaves this server about once. A lone leecher gets less.
    #[arg(long)]
    super_seed: bool,
    /// Send peers at most this many bytes per second, all datasets and the web seed's HTTP
    /// bodies together; a K, M or G suffix means KiB, MiB or GiB. Default: no limit. (The size
    /// of a researcher's upload is --max-upload-size.)
    #[arg(long, value_name = "RATE", value_parser = crate::announce::bytes_per_second)]
    max_upload_rate: Option<u64>,
    /// Peers each dataset uploads to at once, chosen again every 10 s, one of them in turn
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
    /// Print a JSON line when the server is up.
    #[arg(long)]
    json: bool,
}

/// The embedded tracker's announce URL for new torrents. Listening on every address
/// (0.0.0.0), it is named by --public-url's host: `http://0.0.0.0:6969/announce` in a torrent
/// sends every other machine nowhere.
fn embedded_announce_url(tracker: &TrackerServer, public_url: Option<&str>) -> String {
    let addr = tracker.local_addr();
    if !addr.ip().is_unspecified() {
        return tracker.http_announce_url();
    }
    match public_url.and_then(|url| pow_tracker::TrackerUrl::parse(url).ok()) {
        Some(url) if url.host().contains(':') => {
            format!("http://[{}]:{}/announce", url.host(), addr.port())
        }
        Some(url) => format!("http://{}:{}/announce", url.host(), addr.port()),
        None => {
            eprintln!(
                "pow: warning: the tracker listens on {addr}, and new torrents name it so, which \
                 no other machine can reach: give --public-url (its host names the tracker)"
            );
            tracker.http_announce_url()
        }
    }
}

pub fn serve(pow_dir: Option<&Path>, args: ServeArgs) -> CmdResult {
    // `pow --pow-dir X serve` served .pow/serve, beside a project it was told was X.
    let data = args.data.clone().unwrap_or_else(|| {
        pow_dir
            .unwrap_or(Path::new(crate::source_cmd::DEFAULT_POW_DIR))
            .join("serve")
    });
    let runtime = crate::runtime::engine_runtime(crate::runtime::Work::Seed)?;
    let served = runtime.block_on(serve_async(args, &data));
    // Blocking work still running (hashing an upload whose request was dropped, checking a
    // dataset before seeding it) is not waited for: a dataset is published by its record and
    // torrent, written last, so what such work leaves is cleared at the next start.
    runtime.shutdown_background();
    served
}

async fn serve_async(args: ServeArgs, data: &Path) -> CmdResult {
    let counted = crate::download_cmd::count_signals()?;
    // What every upload's torrent will carry: refused now, not at each upload.
    let options = CreateOptions {
        trackers: args.trackers.iter().map(|t| vec![t.clone()]).collect(),
        web_seeds: args.public_url.iter().cloned().collect(),
        ..CreateOptions::default()
    };
    check_options(&options)?;
    crate::torrent_cmd::warn_of_trackers_pow_cannot_use(&options.trackers);
    let tracker = if args.trackers.is_empty() {
        let addr = args
            .tracker_listen
            .unwrap_or(SocketAddr::new(args.listen.ip(), 6969));
        let server = TrackerServer::start(addr, ServerConfig::default())
            .await
            .map_err(|e| format!("cannot start the tracker on {addr}: {e}"))?;
        Some(server)
    } else {
        None
    };
    let announce_urls = match &tracker {
        Some(t) => vec![embedded_announce_url(t, args.public_url.as_deref())],
        None => args.trackers.clone(),
    };
    let http = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    let url = format!("http://{}", http.local_addr()?);
    let public_url = args
        .public_url
        .clone()
        .or_else(|| (!args.listen.ip().is_unspecified()).then(|| url.clone()));
    if public_url.is_none() {
        eprintln!("pow: warning: no --public-url: new torrents get no web seed");
    }
    let library = Arc::new(Library::open(
        data,
        announce_urls.clone(),
        public_url.clone(),
    )?);
    let peer_addr = SocketAddr::new(args.listen.ip(), args.peer_port);
    let listener = SharedListener::bind(peer_addr, args.encryption.engine(), args.utp.engine())
        .await
        .map_err(|e| format!("cannot listen for peers on {peer_addr}: {e}"))?;
    if let Some(shared) = listener.take_shared_udp() {
        crate::dht_peers::offer_udp(shared);
    }
    let upload_limit = args
        .max_upload_rate
        .map(|rate| Arc::new(pow_engine::RateLimit::new(rate)));
    let seeder = EngineSeeder(Arc::new(
        MultiSeed::new(listener, args.super_seed, upload_limit.clone(), Vec::new())
            .with_dht(args.dht.plan(peer_addr.ip(), args.peer_port))
            .with_upload_slots(args.upload_slots),
    ));

    // Seed what is already published, one at a time (each is a disk check when the resume
    // file cannot be trusted), while the page is already up.
    let datasets = library.datasets();
    {
        let (library, seeder) = (library.clone(), seeder.clone());
        let datasets = datasets.clone();
        tokio::spawn(async move {
            for dataset in &datasets {
                if let Err(e) = pow_server::start_seeding_dataset(&library, &seeder, dataset).await
                {
                    eprintln!("pow: cannot seed {} ({}): {e}", dataset.name, dataset.md5);
                }
            }
        });
    }
    if args.json {
        report_line!(
            "{}",
            serde_json::json!({
                "url": url,
                "web_seed": public_url.as_ref().map(|u| format!("{u}/content/")),
                "torrent_store": format!("{url}/torrents"),
                "peer_port": seeder.0.port(),
                "trackers": announce_urls,
                "data": library.root(),
                "datasets": datasets.len(),
            })
        );
    } else {
        eprintln!(
            "serving {url} (torrent store {url}/torrents), peers on port {}, tracker {}; {} datasets; Ctrl-C to stop",
            seeder.0.port(),
            announce_urls.join(" "),
            datasets.len()
        );
    }
    let app = pow_server::router(
        library.clone(),
        Arc::new(seeder.clone()),
        ServeConfig {
            max_upload_size: args.max_upload_size,
            token: args.token.clone(),
            content_pacer: upload_limit.map(|limit| {
                Arc::new(move |bytes: usize| limit.take_owing(bytes)) as pow_server::ContentPacer
            }),
            max_concurrent_uploads: usize::from(args.max_concurrent_uploads),
            upload_idle_timeout: args.upload_idle_timeout,
            upload_min_rate: args.upload_min_rate,
        },
    );
    let server = pow_server::run(http, app, crate::download_cmd::signals(counted.clone(), 1));
    // Requests in flight (an upload, a web-seed body) get a grace period to finish; a slow or
    // stalled one must not keep the server from stopping, and a second signal stops it at once.
    let grace_over = async {
        crate::download_cmd::signals(counted.clone(), 1).await;
        eprintln!(
            "pow: stopping: requests in flight get {} s to finish; signal again to stop now",
            SHUTDOWN_GRACE.as_secs()
        );
        tokio::select! {
            _ = tokio::time::sleep(SHUTDOWN_GRACE) => {}
            _ = crate::download_cmd::signals(counted.clone(), 2) => {}
        }
        eprintln!("pow: requests still in flight are dropped (an upload leaves nothing)");
    };
    tokio::select! {
        served = server => served?,
        _ = grace_over => {}
    }
    if let Err(e) = library.drop_uploads_in_flight() {
        eprintln!("pow: {e}");
    }
    // Stopping the seeds tells their trackers; a dead tracker is waited for only until the
    // second signal.
    tokio::select! {
        _ = seeder.0.stop() => {}
        _ = crate::download_cmd::signals(counted, 2) => eprintln!("pow: stopped without telling the trackers"),
    }
    drop(tracker);
    Ok(())
}

/// How long requests in flight may take to finish once the server is told to stop.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

#[derive(Clone)]
struct EngineSeeder(Arc<MultiSeed>);

impl Seeder for EngineSeeder {
    fn seed(&self, metainfo: Arc<Metainfo>, data_dir: PathBuf) -> SeedFuture {
        let seeds = self.0.clone();
        Box::pin(async move { seeds.start(metainfo, data_dir).await })
    }

    fn status(&self, info_hash: &str) -> Option<SeedStatus> {
        Some(match self.0.status(info_hash)? {
            Status::Starting => SeedStatus::default(),
            Status::Running(s, started_from) => SeedStatus {
                seeding: true,
                started_from: Some(started_from.as_str()),
                peers: s.peers,
                uploaded: s.uploaded,
                pieces_have: s.pieces_have,
                pieces_total: s.pieces_total,
                error: None,
            },
            Status::Failed(why) => SeedStatus {
                error: Some(told_to_visitors(why)),
                ..SeedStatus::default()
            },
        })
    }
}

/// Why a dataset is not seeded, as the page and `/api/datasets` tell anyone who asks: a reason
/// that names a path (a storage error names the server's files, the data directory's in it)
/// is replaced; the server's log has it whole.
fn told_to_visitors(why: String) -> String {
    if why.contains('/') {
        "seeding could not start (the server's log says why)".into()
    } else {
        why
    }
}

#[cfg(test)]
mod tests {
    use super::told_to_visitors;

    #[test]
    fn a_seeding_failure_is_told_without_the_servers_paths() {
        let storage = "/srv/pow/content/0cc1/cells.zip: Permission denied (os error 13)";
        assert!(!told_to_visitors(storage.into()).contains("/srv"));
        let pieces = "only 3 of 8 pieces verify on disk";
        assert_eq!(told_to_visitors(pieces.into()), pieces);
    }
}
