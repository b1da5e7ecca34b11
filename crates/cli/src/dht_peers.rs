//! Glue between a torrent and the Mainline DHT (`--dht`): a node on the peer port's number
//! (UDP), bootstrapped from `--dht-bootstrap` or the public routers, and a loop that looks the
//! info-hash up and announces our peer port, giving the peers found to the caller until it
//! says it wants no more. One node per process: a magnet link's metadata phase and then its
//! download share it (and its UDP port).

use pow_dht::Dht;
use pow_engine::{EngineConfig, Torrent};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;
use tokio::sync::OnceCell;

static NODE: OnceCell<Dht> = OnceCell::const_new();
/// The nodes the process's node knew in its last run ([`DhtPlan::state`]).
static SAVED_NODES: OnceLock<Vec<SocketAddr>> = OnceLock::new();
/// Peers the DHT named in this process (each lookup's count, summed), for reports.
static PEERS_FOUND: AtomicU64 = AtomicU64::new(0);

/// Peers the DHT has named so far in this process.
pub fn peers_found() -> u64 {
    PEERS_FOUND.load(Ordering::Relaxed)
}

/// Lookups while no peer was found come this often; once some were, this much less often.
const RETRY_EMPTY: Duration = Duration::from_secs(15);
const REANNOUNCE: Duration = Duration::from_secs(5 * 60);

/// The wait before the next lookup, after one that waited `last`: [`REANNOUNCE`] once peers
/// were found; while none are, [`RETRY_EMPTY`] until our announce was taken, then twice the
/// last wait up to [`REANNOUNCE`] (a torrent nobody else announces was looked up, and
/// announced to 8 nodes, every 15 s for as long as it ran).
fn next_lookup_in(last: Duration, found: bool, announced: bool) -> Duration {
    match (found, announced) {
        (true, _) => REANNOUNCE,
        (false, false) => RETRY_EMPTY,
        (false, true) => (last * 2).clamp(RETRY_EMPTY, REANNOUNCE),
    }
}

/// The DHT options of every command that joins swarms. --dht-port and --dht-state need a
/// node (--dht or --dht-bootstrap): alone they were taken and ignored.
#[derive(clap::Args, Clone, Debug)]
#[command(group(clap::ArgGroup::new("dht_node").args(["dht", "dht_bootstrap"]).multiple(true)))]
pub struct DhtArgs {
    /// Find peers on the Mainline DHT (BEP 5) as well, and announce there. The node uses UDP
    /// on the peer port's number (or --dht-port) and asks the public routers first (or
    /// --dht-bootstrap), and the torrent's own `nodes`. Never for a private torrent.
    #[arg(long)]
    pub dht: bool,
    /// A DHT node to bootstrap from instead of the public routers; repeatable; implies --dht.
    #[arg(long = "dht-bootstrap", value_name = "HOST:PORT")]
    pub dht_bootstrap: Vec<String>,
    /// UDP port of the DHT node (default: the peer port's number).
    #[arg(long, value_name = "PORT", requires = "dht_node")]
    pub dht_port: Option<u16>,
    /// Where the DHT node keeps its id and the nodes that answered it, between runs (read at
    /// start and asked first, written after each lookup). Default: $XDG_CACHE_HOME (or
    /// ~/.cache) /pow/dht-state when bootstrapping from the public routers; none with
    /// --dht-bootstrap alone, whose network is not the public one.
    #[arg(long, value_name = "FILE", requires = "dht_node")]
    pub dht_state: Option<PathBuf>,
}

impl DhtArgs {
    /// The node to run, if `--dht` or `--dht-bootstrap` asked for one, for a session bound
    /// to `bind` with TCP peer port `peer_port`.
    pub fn plan(&self, bind: IpAddr, peer_port: u16) -> Option<DhtPlan> {
        if !self.dht && self.dht_bootstrap.is_empty() {
            return None;
        }
        // The node speaks IPv4 (BEP 5); an IPv6 --bind still gets an IPv4 node.
        let ip = match bind {
            IpAddr::V4(ip) => ip,
            IpAddr::V6(_) => Ipv4Addr::UNSPECIFIED,
        };
        Some(DhtPlan {
            bind: SocketAddr::new(IpAddr::V4(ip), self.dht_port.unwrap_or(peer_port)),
            bootstrap: self.dht_bootstrap.clone(),
            state: state_path(self.dht_state.clone(), &self.dht_bootstrap),
        })
    }
}

/// The state file to use: `explicit`, else the default one when `bootstrap` is empty (the
/// public DHT), else none.
pub fn state_path(explicit: Option<PathBuf>, bootstrap: &[String]) -> Option<PathBuf> {
    explicit.or_else(|| {
        if !bootstrap.is_empty() {
            return None;
        }
        let cache = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
        Some(cache.join("pow").join("dht-state"))
    })
}

/// The saved state at `path`, if any; a file that cannot be read is reported and ignored.
pub fn load_state(path: Option<&Path>) -> Option<pow_dht::state::Saved> {
    match pow_dht::state::load(path?) {
        Ok(saved) => saved,
        Err(e) => {
            eprintln!("pow: warning: DHT state not used: {e}");
            None
        }
    }
}

/// Writes the node's id and good nodes to `path` (when it knows any node); a failure is
/// logged, not fatal.
pub fn save_state(path: Option<&Path>, dht: &Dht) {
    let Some(path) = path else { return };
    let saved = dht.saved_state();
    if saved.nodes.is_empty() {
        return;
    }
    if let Err(e) = pow_dht::state::save(path, &saved) {
        tracing::warn!("DHT state not saved to {}: {e}", path.display());
    }
}

/// Readies a session's `config` for the DHT: peers that run a node hear our node's port and
/// theirs is asked in (BEP 5 `port`). False, with a warning, for a private torrent.
pub async fn prepare(
    plan: &DhtPlan,
    private: bool,
    config: &mut EngineConfig,
) -> std::io::Result<bool> {
    if private {
        eprintln!("pow: warning: --dht is not used for a private torrent (BEP 27)");
        return Ok(false);
    }
    let node = node(plan).await?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    config.dht_port = Some(node.local_addr().port());
    config.dht_nodes = Some(tx);
    tokio::spawn(async move {
        while let Some(addr) = rx.recv().await {
            node.add_node(addr);
        }
    });
    Ok(true)
}

/// Looks `torrent` up and announces it (on `announce_port`) for as long as the process runs,
/// giving it the peers found.
pub async fn feed(plan: &DhtPlan, torrent: &Torrent, announce_port: u16) -> std::io::Result<()> {
    let info_hash = torrent.metainfo().info_hash.0;
    let nodes = torrent.metainfo().dht_nodes.clone();
    let torrent = torrent.clone();
    start(plan, info_hash, announce_port, &nodes, move |peers| {
        torrent.add_peers(peers);
        true
    })
    .await
}

/// Where the node listens and whom it asks first.
#[derive(Clone, Debug)]
pub struct DhtPlan {
    pub bind: SocketAddr,
    /// `host:port` names; empty means the public routers.
    pub bootstrap: Vec<String>,
    /// Where the node's id and known nodes are kept between runs ([`state_path`]).
    pub state: Option<PathBuf>,
}

/// A uTP socket's port offered to the DHT node (see [`offer_udp`]).
static OFFERED_UDP: std::sync::Mutex<Option<pow_utp::SharedUdp>> = std::sync::Mutex::new(None);

/// Offers the port a uTP socket listens on to the DHT node, which takes it when it is the
/// port the node would bind (libtorrent and Transmission run both on one socket, so peers
/// and nodes find both at the peer port's number).
pub fn offer_udp(shared: pow_utp::SharedUdp) {
    *OFFERED_UDP.lock().expect("offered udp lock") = Some(shared);
}

/// The process's DHT node, started on first use.
pub async fn node(plan: &DhtPlan) -> std::io::Result<&'static Dht> {
    NODE.get_or_try_init(|| async {
        let saved = load_state(plan.state.as_deref());
        let id = saved.as_ref().map(|s| s.id);
        let _ = SAVED_NODES.set(saved.map(|s| s.nodes).unwrap_or_default());
        let offered = OFFERED_UDP.lock().expect("offered udp lock").take();
        if let Some(shared) = offered {
            if shared.socket.local_addr().ok() == Some(plan.bind) {
                return Dht::on_shared_socket(shared.socket, shared.incoming, id);
            }
        }
        let bound = match Dht::bind_as(plan.bind, id).await {
            // Another node (or program) has the port: any port does, since the `port`
            // message names the one we get.
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                let any = SocketAddr::new(plan.bind.ip(), 0);
                let dht = Dht::bind_as(any, id).await;
                if let Ok(dht) = &dht {
                    eprintln!(
                        "pow: warning: UDP {} is in use; the DHT node listens on {}",
                        plan.bind,
                        dht.local_addr()
                    );
                }
                dht
            }
            other => other,
        };
        bound.map_err(|e| {
            std::io::Error::new(e.kind(), format!("DHT node on UDP {}: {e}", plan.bind))
        })
    })
    .await
}

/// Starts the node (once) and a loop for `info_hash`; `announce_port` is our TCP peer port,
/// `torrent_nodes` the torrent's own `nodes` (asked besides the routers). The loop ends when
/// `on_peers` returns false.
pub async fn start(
    plan: &DhtPlan,
    info_hash: [u8; 20],
    announce_port: u16,
    torrent_nodes: &[String],
    on_peers: impl Fn(Vec<SocketAddr>) -> bool + Send + 'static,
) -> std::io::Result<()> {
    let dht = node(plan).await?;
    let mut names: Vec<String> = match plan.bootstrap.is_empty() {
        true => pow_dht::PUBLIC_ROUTERS
            .iter()
            .map(|s| s.to_string())
            .collect(),
        false => plan.bootstrap.clone(),
    };
    names.extend(torrent_nodes.iter().cloned());
    let node = dht.clone();
    let state = plan.state.clone();
    tokio::spawn(async move {
        let mut wait = RETRY_EMPTY;
        loop {
            // Not `nodes() == 0`: after a few minutes of lost packets every node had failed,
            // lookups asked nobody, and the routers were never asked again.
            if node.answering_nodes() == 0 {
                let mut routers = pow_dht::resolve(&names).await;
                let saved = SAVED_NODES.get().map(Vec::as_slice).unwrap_or_default();
                routers.extend_from_slice(saved);
                let known = node.bootstrap(&routers).await;
                tracing::info!(
                    "dht: {known} nodes after bootstrapping from {names:?} and {} saved",
                    saved.len()
                );
                save_state(state.as_deref(), &node);
                if known == 0 {
                    tokio::time::sleep(RETRY_EMPTY).await;
                    continue;
                }
            }
            let lookup = node.announce(info_hash, announce_port).await;
            tracing::info!(
                "dht: {} peers from {} of {} nodes asked; announced to {}",
                lookup.peers.len(),
                lookup.answered,
                lookup.queried,
                lookup.announced
            );
            save_state(state.as_deref(), &node);
            let found = !lookup.peers.is_empty();
            PEERS_FOUND.fetch_add(lookup.peers.len() as u64, Ordering::Relaxed);
            if !on_peers(lookup.peers) {
                return;
            }
            wait = next_lookup_in(wait, found, lookup.announced > 0);
            tokio::time::sleep(wait).await;
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups_back_off_once_announced_while_nobody_else_is_found() {
        let waits: Vec<u64> = std::iter::successors(Some(RETRY_EMPTY), |&last| {
            Some(next_lookup_in(last, false, true))
        })
        .take(7)
        .map(|wait| wait.as_secs())
        .collect();
        assert_eq!(waits, [15, 30, 60, 120, 240, 300, 300]);
        assert_eq!(next_lookup_in(REANNOUNCE, false, false), RETRY_EMPTY);
        assert_eq!(next_lookup_in(RETRY_EMPTY, true, false), REANNOUNCE);
    }
}
