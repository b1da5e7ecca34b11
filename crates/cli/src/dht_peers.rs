//! Glue between a torrent and the Mainline DHT (`--dht`): a node on the peer port's number
//! (UDP), bootstrapped from `--dht-bootstrap` or the public routers, and a loop that looks the
//! info-hash up and announces our peer port, giving the peers found to the caller until it
//! says it wants no more. One node per process: a magnet link's metadata phase and then its
//! download share it (and its UDP port).

use pow_dht::Dht;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::OnceCell;

static NODE: OnceCell<Dht> = OnceCell::const_new();
/// Peers the DHT named in this process (each lookup's count, summed), for reports.
static PEERS_FOUND: AtomicU64 = AtomicU64::new(0);

/// Peers the DHT has named so far in this process.
pub fn peers_found() -> u64 {
    PEERS_FOUND.load(Ordering::Relaxed)
}

/// Lookups while no peer was found come this often; once some were, this much less often.
const RETRY_EMPTY: Duration = Duration::from_secs(15);
const REANNOUNCE: Duration = Duration::from_secs(5 * 60);

/// Where the node listens and whom it asks first.
#[derive(Clone, Debug)]
pub struct DhtPlan {
    pub bind: SocketAddr,
    /// `host:port` names; empty means the public routers.
    pub bootstrap: Vec<String>,
}

/// The process's DHT node, started on first use.
pub async fn node(plan: &DhtPlan) -> std::io::Result<&'static Dht> {
    NODE.get_or_try_init(|| async {
        Dht::bind(plan.bind).await.map_err(|e| {
            std::io::Error::new(e.kind(), format!("DHT node on UDP {}: {e}", plan.bind))
        })
    })
    .await
}

/// Starts the node (once) and a loop for `info_hash`; `announce_port` is our TCP peer port.
/// The loop ends when `on_peers` returns false.
pub async fn start(
    plan: &DhtPlan,
    info_hash: [u8; 20],
    announce_port: u16,
    on_peers: impl Fn(Vec<SocketAddr>) -> bool + Send + 'static,
) -> std::io::Result<()> {
    let dht = node(plan).await?;
    let names: Vec<String> = match plan.bootstrap.is_empty() {
        true => pow_dht::PUBLIC_ROUTERS
            .iter()
            .map(|s| s.to_string())
            .collect(),
        false => plan.bootstrap.clone(),
    };
    let node = dht.clone();
    tokio::spawn(async move {
        loop {
            if node.nodes() == 0 {
                let routers = pow_dht::resolve(&names).await;
                let known = node.bootstrap(&routers).await;
                tracing::info!("dht: {known} nodes after bootstrapping from {names:?}");
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
            let found = !lookup.peers.is_empty();
            PEERS_FOUND.fetch_add(lookup.peers.len() as u64, Ordering::Relaxed);
            if !on_peers(lookup.peers) {
                return;
            }
            tokio::time::sleep(if found { REANNOUNCE } else { RETRY_EMPTY }).await;
        }
    });
    Ok(())
}
