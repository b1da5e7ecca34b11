//! Glue between a running torrent and the tracker announce loop: counters go to the trackers,
//! peers come back to the engine.

use pow_engine::Torrent;
use pow_tracker::announcer::{self, AnnounceHandle, Announcer, Progress, Tiers, Timing, Update};
use pow_tracker::{Client, ClientConfig};
use std::sync::Arc;
use std::time::Duration;

/// Starts announcing `torrent` to `tiers`; `None` when there is no tracker.
pub fn start(
    torrent: &Torrent,
    tiers: Vec<Vec<String>>,
    peer_id: [u8; 20],
    port: u16,
) -> Option<Handle> {
    if tiers.iter().all(Vec::is_empty) {
        return None;
    }
    let client = Arc::new(Client::new(ClientConfig::default()));
    let tiers = Tiers::new(tiers, &mut rand::rng());
    let announcer = Announcer::new(client, tiers, torrent.metainfo().info_hash.0, peer_id, port);
    let progress = |t: &Torrent| {
        let s = t.snapshot();
        Progress {
            uploaded: s.uploaded,
            downloaded: s.downloaded,
            left: s.left,
        }
    };
    let (progress_tx, progress_rx) = tokio::sync::watch::channel(progress(torrent));
    let mut handle = announcer::spawn(announcer, progress_rx, Timing::default());
    let mut updates = std::mem::replace(
        &mut handle.updates,
        tokio::sync::mpsc::unbounded_channel().1,
    );
    let feeder = {
        let torrent = torrent.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    update = updates.recv() => match update {
                        Some(Update::Peers { url, peers, next_in, .. }) => {
                            tracing::info!("{url}: {} peers, next announce in {next_in:?}", peers.len());
                            torrent.add_peers(peers);
                        }
                        Some(Update::Failed { error, retry_in, .. }) => {
                            eprintln!("pow: tracker: {error} (retry in {}s)", retry_in.as_secs());
                        }
                        Some(Update::Stopped) | None => return,
                    },
                    _ = tick.tick() => { let _ = progress_tx.send(progress(&torrent)); }
                }
            }
        })
    };
    Some(Handle { handle, feeder })
}

pub struct Handle {
    handle: AnnounceHandle,
    feeder: tokio::task::JoinHandle<()>,
}

impl Handle {
    pub fn completed(&self) {
        self.handle.completed();
    }

    /// Sends `stopped` (bounded by the announcer's stop timeout) and ends the loop.
    pub async fn stop(self) {
        self.feeder.abort();
        self.handle.stop().await;
    }
}
