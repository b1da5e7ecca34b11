//! `pow tracker`: run the test tracker (`--listen`), or talk to a tracker once
//! (`announce`, `scrape`) as a debugging tool.

use crate::CmdResult;
use clap::{Args, Subcommand, ValueEnum};
use pow_tracker::server::{ServerConfig, TrackerServer};
use pow_tracker::{AnnounceRequest, Client, ClientConfig, Event, InfoHash};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct TrackerArgs {
    #[command(subcommand)]
    command: Option<TrackerCommand>,
    /// Run an open test tracker: HTTP /announce and /scrape plus UDP, on this address.
    #[arg(long, value_name = "ADDR:PORT")]
    listen: Option<SocketAddr>,
    /// Announce interval sent to clients, in seconds (peers expire after two), at most a day
    /// (a larger one overflowed the expiry time and stopped peers from ever expiring).
    #[arg(long, default_value_t = 60, value_name = "S",
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    interval: u64,
    /// Most torrents kept in memory (oldest evicted).
    #[arg(long, default_value_t = 10_000)]
    max_torrents: usize,
    /// Most peers kept per torrent (oldest evicted).
    #[arg(long, default_value_t = 2_000)]
    max_peers: usize,
}

#[derive(Subcommand)]
enum TrackerCommand {
    /// Announce once to URL for TORRENT and print the peers and counters.
    Announce(AnnounceArgs),
    /// Scrape URL for TORRENT and print the counters.
    Scrape {
        url: String,
        torrent: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum EventArg {
    None,
    Started,
    Completed,
    Stopped,
}

#[derive(Args)]
struct AnnounceArgs {
    /// Tracker URL (http://, https:// or udp://).
    url: String,
    torrent: PathBuf,
    #[arg(long, value_enum, default_value = "started")]
    event: EventArg,
    /// Peer port to announce.
    #[arg(long, default_value_t = 6881)]
    port: u16,
    /// Bytes left (default: the torrent's total length, i.e. nothing downloaded).
    #[arg(long)]
    left: Option<u64>,
    #[arg(long, default_value_t = 50)]
    numwant: u32,
    /// 20-byte peer id (default: -PW0001- and 12 random characters).
    #[arg(long)]
    peer_id: Option<String>,
    /// Seconds to wait for the tracker (connect and read each; UDP: per attempt).
    #[arg(long, default_value_t = 15)]
    timeout: u64,
    #[arg(long)]
    json: bool,
}

pub fn run(args: TrackerArgs) -> CmdResult {
    match (args.command, args.listen) {
        (Some(TrackerCommand::Announce(a)), _) => runtime()?.block_on(announce(a)),
        (Some(TrackerCommand::Scrape { url, torrent, json }), _) => {
            runtime()?.block_on(scrape(url, torrent, json))
        }
        (None, Some(addr)) => {
            let cfg = ServerConfig {
                interval: Duration::from_secs(args.interval.max(1)),
                max_torrents: args.max_torrents.max(1),
                max_peers_per_torrent: args.max_peers.max(1),
                ..ServerConfig::default()
            };
            serve(addr, cfg)
        }
        (None, None) => {
            Err("pow tracker needs --listen ADDR:PORT or a subcommand (announce, scrape)".into())
        }
    }
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

fn serve(addr: SocketAddr, cfg: ServerConfig) -> CmdResult {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let server = TrackerServer::start(addr, cfg)
            .await
            .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
        // One write for both lines, whose failure does not matter: a reader that takes the
        // first line and closes the pipe (a test, `| head -1`) must not end the tracker, as a
        // second `println!` into the closed pipe did (a panic).
        let lines = format!(
            "tracker listening on {}\ntracker listening on {}\n",
            server.http_announce_url(),
            server.udp_announce_url()
        );
        let mut stdout = std::io::stdout().lock();
        let _ = std::io::Write::write_all(&mut stdout, lines.as_bytes());
        let _ = std::io::Write::flush(&mut stdout);
        drop(stdout);
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        let s = server.stats();
        tracing::info!(
            torrents = s.torrents,
            peers = s.peers,
            announces = s.announces,
            rejected = s.rejected,
            "tracker stopping"
        );
        Ok(())
    })
}

/// Info-hash and total length of a .torrent.
fn torrent_facts(path: &Path) -> Result<(InfoHash, u64), Box<dyn std::error::Error>> {
    let metainfo = pow_metainfo::Metainfo::from_file(path)?;
    Ok((metainfo.info_hash.0, metainfo.total_length()))
}

fn client(timeout: Duration) -> Client {
    Client::new(ClientConfig {
        connect_timeout: timeout,
        read_timeout: timeout,
        udp_base_timeout: timeout,
        udp_max_retries: 0,
        ..ClientConfig::default()
    })
}

async fn announce(a: AnnounceArgs) -> CmdResult {
    let (info_hash, length) = torrent_facts(&a.torrent)?;
    let peer_id: [u8; 20] = match &a.peer_id {
        Some(s) => s
            .as_bytes()
            .try_into()
            .map_err(|_| "--peer-id must be exactly 20 bytes")?,
        None => pow_engine::new_peer_id(),
    };
    let left = a.left.unwrap_or(length);
    let req = AnnounceRequest {
        info_hash,
        peer_id,
        port: a.port,
        uploaded: 0,
        downloaded: length.saturating_sub(left),
        left,
        event: match a.event {
            EventArg::None => Event::None,
            EventArg::Started => Event::Started,
            EventArg::Completed => Event::Completed,
            EventArg::Stopped => Event::Stopped,
        },
        numwant: Some(a.numwant),
        key: rand::random(),
        tracker_id: None,
    };
    let r = client(Duration::from_secs(a.timeout.max(1)))
        .announce(&a.url, &req)
        .await?;
    if a.json {
        let v = serde_json::json!({
            "url": a.url,
            "info_hash": hex::encode(info_hash),
            "interval": r.interval,
            "min_interval": r.min_interval,
            "complete": r.complete,
            "incomplete": r.incomplete,
            "warning": r.warning,
            "tracker_id": r.tracker_id.as_ref().map(|t| String::from_utf8_lossy(t).into_owned()),
            "peers": r.peers.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        let opt = |v: Option<u32>| v.map_or("-".to_string(), |v| v.to_string());
        println!("info_hash  {}", hex::encode(info_hash));
        println!("interval   {}", opt(r.interval));
        println!("min        {}", opt(r.min_interval));
        println!("seeders    {}", opt(r.complete));
        println!("leechers   {}", opt(r.incomplete));
        if let Some(w) = &r.warning {
            println!("warning    {w}");
        }
        println!("peers      {}", r.peers.len());
        for p in &r.peers {
            println!("  {p}");
        }
    }
    Ok(())
}

async fn scrape(url: String, torrent: PathBuf, json: bool) -> CmdResult {
    let (info_hash, _) = torrent_facts(&torrent)?;
    let files = client(Duration::from_secs(15))
        .scrape(&url, &[info_hash])
        .await?;
    let s = files.get(&info_hash).copied().unwrap_or_default();
    if json {
        let v = serde_json::json!({
            "url": url,
            "info_hash": hex::encode(info_hash),
            "complete": s.complete,
            "incomplete": s.incomplete,
            "downloaded": s.downloaded,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!("info_hash  {}", hex::encode(info_hash));
        println!("seeders    {}", s.complete);
        println!("leechers   {}", s.incomplete);
        println!("downloaded {}", s.downloaded);
    }
    Ok(())
}
