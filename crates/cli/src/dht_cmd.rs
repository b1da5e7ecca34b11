//! `pow dht`: run a DHT node of our own (`node`: a lab's bootstrap node, or a test network's),
//! or look an info-hash up once (`lookup`, debugging), as `pow tracker` does for trackers.

use crate::CmdResult;
use clap::Subcommand;
use pow_dht::Dht;
use pow_metainfo::{InfoHash, Metainfo};
use std::net::SocketAddr;

#[derive(Subcommand)]
pub enum DhtCommand {
    /// Run a DHT node until interrupted: nodes bootstrap from it, and keep their announces in
    /// it, as in any node.
    Node {
        /// UDP address to listen on (port 0: any).
        #[arg(long, value_name = "ADDR:PORT")]
        listen: SocketAddr,
        /// A node of a network to join; repeatable. None: the node starts a network of its own.
        #[arg(long = "dht-bootstrap", value_name = "HOST:PORT")]
        bootstrap: Vec<String>,
    },
    /// Look an info-hash up once and print the peers found; with --announce, also announce
    /// that port as a peer.
    Lookup {
        /// An info-hash (40 hex digits), a magnet link or a .torrent file (whose `nodes` are
        /// asked too).
        target: String,
        /// A node to bootstrap from instead of the public routers; repeatable.
        #[arg(long = "dht-bootstrap", value_name = "HOST:PORT")]
        bootstrap: Vec<String>,
        /// Announce this TCP port as a peer for the info-hash.
        #[arg(long, value_name = "PORT")]
        announce: Option<u16>,
        /// UDP address of our node.
        #[arg(long, default_value = "0.0.0.0:0", value_name = "ADDR:PORT")]
        bind: SocketAddr,
        /// The node's saved id and nodes (see `pow download --help`), read before the lookup
        /// and written after it.
        #[arg(long, value_name = "FILE")]
        dht_state: Option<std::path::PathBuf>,
        #[arg(long)]
        json: bool,
    },
}

impl DhtCommand {
    /// The command prints its result and exits (see `die_quietly_when_stdout_closes`).
    pub fn prints_and_exits(&self) -> bool {
        matches!(self, DhtCommand::Lookup { .. })
    }
}

pub fn run(command: DhtCommand) -> CmdResult {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match command {
        DhtCommand::Node { listen, bootstrap } => runtime.block_on(node(listen, bootstrap)),
        DhtCommand::Lookup {
            target,
            bootstrap,
            announce,
            bind,
            dht_state,
            json,
        } => {
            let state = crate::dht_peers::state_path(dht_state, &bootstrap);
            runtime.block_on(lookup(&target, bootstrap, announce, bind, state, json))
        }
    }
}

async fn node(listen: SocketAddr, bootstrap: Vec<String>) -> CmdResult {
    let dht = Dht::bind(listen)
        .await
        .map_err(|e| format!("cannot listen on UDP {listen}: {e}"))?;
    // One write, whose failure does not matter (a reader that took the line and left).
    let line = format!("dht node listening on {}\n", dht.local_addr());
    let _ = std::io::Write::write_all(&mut std::io::stdout().lock(), line.as_bytes());
    if !bootstrap.is_empty() {
        let known = dht.bootstrap(&pow_dht::resolve(&bootstrap).await).await;
        tracing::info!("dht node: {known} nodes after bootstrapping from {bootstrap:?}");
    }
    crate::download_cmd::shutdown_signal().await;
    let (hashes, peers) = dht.stored();
    eprintln!(
        "dht node stopping: {} nodes known, {peers} peers kept for {hashes} info-hashes",
        dht.nodes()
    );
    dht.shutdown();
    Ok(())
}

async fn lookup(
    target: &str,
    bootstrap: Vec<String>,
    announce: Option<u16>,
    bind: SocketAddr,
    state: Option<std::path::PathBuf>,
    json: bool,
) -> CmdResult {
    let (info_hash, torrent_nodes) = target_of(target)?;
    let saved = crate::dht_peers::load_state(state.as_deref());
    let mut names = match bootstrap.is_empty() {
        true => pow_dht::PUBLIC_ROUTERS
            .iter()
            .map(|s| s.to_string())
            .collect(),
        false => bootstrap,
    };
    names.extend(torrent_nodes);
    let dht = Dht::bind_as(bind, saved.as_ref().map(|s| s.id))
        .await
        .map_err(|e| format!("cannot bind UDP {bind}: {e}"))?;
    let mut routers = pow_dht::resolve(&names).await;
    if let Some(saved) = &saved {
        routers.extend_from_slice(&saved.nodes);
        names.push(format!("{} saved nodes", saved.nodes.len()));
    }
    let nodes = dht.bootstrap(&routers).await;
    if nodes == 0 {
        return Err(format!("no DHT node answered (asked {})", names.join(", ")).into());
    }
    let found = match announce {
        Some(port) => dht.announce(info_hash.0, port).await,
        None => dht.get_peers(info_hash.0).await,
    };
    crate::dht_peers::save_state(state.as_deref(), &dht);
    dht.shutdown();
    if json {
        let value = serde_json::json!({
            "info_hash": info_hash.to_hex(),
            "nodes": nodes,
            "queried": found.queried,
            "answered": found.answered,
            "announced": found.announced,
            "peers": found.peers.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
        });
        println!("{value}");
    } else {
        println!(
            "{}: {} of {} nodes answered ({nodes} known after bootstrap), {} peers{}",
            info_hash.to_hex(),
            found.answered,
            found.queried,
            found.peers.len(),
            match announce {
                Some(port) => format!(", port {port} announced to {}", found.announced),
                None => String::new(),
            }
        );
        for peer in &found.peers {
            println!("peer {peer}");
        }
    }
    Ok(())
}

/// The info-hash of a hex string, magnet link or .torrent file, and the torrent's `nodes`.
fn target_of(target: &str) -> Result<(InfoHash, Vec<String>), Box<dyn std::error::Error>> {
    if let Some(hash) = InfoHash::from_hex(target) {
        return Ok((hash, Vec::new()));
    }
    if pow_metainfo::magnet::is_magnet_link(target) {
        let magnet = pow_metainfo::magnet::Magnet::parse(target)?;
        return Ok((magnet.v1()?, magnet.dht_node_names()));
    }
    let metainfo = Metainfo::from_file(std::path::Path::new(target))?;
    Ok((metainfo.info_hash, metainfo.dht_nodes))
}
