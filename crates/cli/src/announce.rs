//! Glue between a running torrent and the tracker announce loop: counters go to the trackers,
//! peers come back to the engine.

use pow_engine::{EngineConfig, RateLimit, Torrent};
use pow_picker::Picker;
use pow_storage::Storage;
use pow_tracker::announcer::{self, AnnounceHandle, Announcer, Progress, Tiers, Timing, Update};
use pow_tracker::{Client, ClientConfig};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

/// The peer id of this process, for every torrent and for a magnet link's metadata phase
/// (libtorrent too has one per session): the connection the metadata came over goes on as the
/// session's, so both must say the same.
pub fn peer_id() -> [u8; 20] {
    static PEER_ID: std::sync::OnceLock<[u8; 20]> = std::sync::OnceLock::new();
    *PEER_ID.get_or_init(pow_engine::new_peer_id)
}

/// What a magnet link's metadata phase found besides the dictionary, for the session.
#[derive(Default)]
pub struct Found {
    /// The connections past their handshakes, the one the dictionary came over first.
    pub connections: Vec<pow_engine::metadata::HandedPeer>,
    /// Every address heard of.
    pub peers: Vec<SocketAddr>,
}

/// Where a torrent listens and which extra trackers it announces to (`download` and `seed`).
#[derive(clap::Args)]
pub struct SwarmArgs {
    /// Peer port to listen on (and announce).
    #[arg(long, default_value_t = 6881)]
    pub port: u16,
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0")]
    pub bind: IpAddr,
    /// Extra tracker announce URL (its own tier, after the torrent's); repeatable.
    #[arg(long = "tracker")]
    pub trackers: Vec<String>,
    /// Seconds between saves of the resume file while pieces verify: a killed process costs at
    /// most this much re-download, or a full check if data was written since. The saves do
    /// not sync the data, so they hold until the machine restarts (then: a full check).
    #[arg(long, default_value_t = 2.0, value_parser = positive_seconds)]
    pub resume_every: f64,
    /// When seeding: tell each peer of a few pieces at a time, and of more once those are seen
    /// at other peers (BEP 16 super-seeding), so leechers pass the data on among themselves
    /// and it leaves this seed about once. For the first seed of new data to many leechers;
    /// a lone leecher gets less than from a plain seed.
    #[arg(long)]
    pub super_seed: bool,
    /// Upload at most this many bytes per second, to all peers together; a K, M or G suffix
    /// means KiB, MiB or GiB (as aria2's --max-upload-limit). Default: no limit.
    #[arg(long, value_name = "RATE", value_parser = bytes_per_second)]
    pub max_upload_rate: Option<u64>,
    /// No peer exchange (BEP 11): do not tell peers which peers we are connected to, nor
    /// dial the peers they name. (Private torrents never use it.)
    #[arg(long)]
    pub no_pex: bool,
    #[command(flatten)]
    pub dht: crate::dht_peers::DhtArgs,
    /// Message stream encryption (MSE/PE) of peer connections: `off` (plaintext only),
    /// `allow` (both accepted; dial in plaintext, and encrypted when a peer closes a plaintext
    /// handshake; the payload stays plaintext whenever the peer allows), `prefer` (dial
    /// encrypted; RC4 for the whole stream whenever the peer allows) or `require` (RC4 only,
    /// both ways; plaintext peers are refused).
    #[arg(long, value_enum, default_value_t = EncryptionArg::Allow, value_name = "MODE")]
    pub encryption: EncryptionArg,
    /// uTP (BEP 29), BitTorrent over UDP with delay-based congestion control: `on` (accepted
    /// on the peer port's number over UDP; peers dialed over TCP first and over uTP when TCP
    /// fails), `prefer` (dialed over uTP first, as libtorrent and Transmission do) or `off`
    /// (TCP only). A DHT node on the same port number shares the UDP socket.
    #[arg(long, value_enum, default_value_t = UtpArg::On, value_name = "MODE")]
    pub utp: UtpArg,
    /// Peers uploaded to at once: those that send us the most (while downloading) or take the
    /// most (when seeding), chosen again every 10 s, and one more in turn every 30 s, so every
    /// peer gets served (BEP 3 choking, as libtorrent's unchoke slots).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..))]
    pub upload_slots: u16,
    /// Seconds between two choking rounds (default 10; a new optimistic peer every third).
    /// Hidden: for tests of slots handed around.
    #[arg(long, hide = true, value_parser = positive_seconds)]
    pub choke_interval: Option<f64>,
    /// Least seconds between two peer-exchange messages to one peer (default 60). Hidden:
    /// for tests of the changes a later message carries.
    #[arg(long, hide = true, value_parser = positive_seconds)]
    pub pex_interval: Option<f64>,
    /// Drop a peer after this many seconds without a whole message from it (default 180).
    /// Hidden: for tests of stalled and trickling peers (LIMITS.md).
    #[arg(long, hide = true, value_parser = positive_seconds)]
    pub idle_timeout: Option<f64>,
    /// Re-request a peer's blocks from others after this many seconds without one of them
    /// (default 60). Hidden, as above.
    #[arg(long, hide = true, value_parser = positive_seconds)]
    pub snub_timeout: Option<f64>,
    /// Shortest wait between announces to a tracker (default 30, or the tracker's
    /// `min interval`) and the first retry delay after every tracker failed (default 15,
    /// doubling). Hidden: for tests of a tracker that goes down and comes back.
    #[arg(long, hide = true, value_parser = positive_seconds)]
    pub announce_min: Option<f64>,
}

/// `--encryption`: which peer connections use message stream encryption.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum EncryptionArg {
    Off,
    Allow,
    Prefer,
    Require,
}

impl EncryptionArg {
    pub fn engine(self) -> pow_engine::Encryption {
        match self {
            EncryptionArg::Off => pow_engine::Encryption::Off,
            EncryptionArg::Allow => pow_engine::Encryption::Allow,
            EncryptionArg::Prefer => pow_engine::Encryption::Prefer,
            EncryptionArg::Require => pow_engine::Encryption::Require,
        }
    }
}

/// `--utp`: whether peer connections may run over uTP.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum UtpArg {
    Off,
    On,
    Prefer,
}

impl UtpArg {
    pub fn engine(self) -> pow_engine::Utp {
        match self {
            UtpArg::Off => pow_engine::Utp::Off,
            UtpArg::On => pow_engine::Utp::On,
            UtpArg::Prefer => pow_engine::Utp::Prefer,
        }
    }
}

fn positive_seconds(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        // Up to about 31 years: beyond that a `Duration` cannot hold it.
        Ok(s) if s > 0.0 && s < 1e9 => Ok(s),
        _ => Err(format!(
            "`{text}` is not a positive number of seconds (under 1e9)"
        )),
    }
}

/// A `--peer`: an address a dial can reach, not one the engine would skip without a word.
pub(crate) fn peer_address(text: &str) -> Result<SocketAddr, String> {
    let addr: SocketAddr = text
        .parse()
        .map_err(|_| format!("`{text}` is not IP:PORT (e.g. 127.0.0.1:6881 or [::1]:6881)"))?;
    if !pow_engine::dialable(addr) {
        return Err(format!(
            "`{text}` cannot be dialed: port 0, an unspecified, broadcast or multicast address"
        ));
    }
    Ok(addr)
}

const RATE_FORM: &str =
    "expected a positive whole number of bytes per second, with K, M or G for KiB, MiB or GiB (e.g. 32M)";

pub(crate) fn bytes_per_second(text: &str) -> Result<u64, String> {
    let (digits, unit) = match text.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&text[..i], c.to_ascii_uppercase()),
        _ => (text, 'B'),
    };
    let shift = match unit {
        'B' => 0,
        'K' => 10,
        'M' => 20,
        'G' => 30,
        _ => return Err(format!("`{text}`: {RATE_FORM}")),
    };
    match digits.parse::<u64>() {
        Ok(n) if n > 0 => n
            .checked_mul(1 << shift)
            .ok_or_else(|| format!("`{text}` is too large")),
        _ => Err(format!("`{text}`: {RATE_FORM}")),
    }
}

impl SwarmArgs {
    /// Starts the engine for `storage` and announces it to the torrent's trackers and ours;
    /// with `max_download_rate` (`--max-download-rate` of the commands that download), the
    /// peers and web seeds together send at most that many bytes per second.
    pub async fn join(
        &self,
        storage: Arc<Storage>,
        picker: Picker,
        max_download_rate: Option<u64>,
    ) -> std::io::Result<(Torrent, Option<Handle>)> {
        self.join_with(storage, picker, max_download_rate, Found::default())
            .await
    }

    /// [`SwarmArgs::join`], going on with what a magnet link's metadata phase `found`: its
    /// connection is adopted and its addresses learnt before any tracker or DHT answer can
    /// name the same peer (which would dial it a second time).
    pub async fn join_with(
        &self,
        storage: Arc<Storage>,
        picker: Picker,
        max_download_rate: Option<u64>,
        found: Found,
    ) -> std::io::Result<(Torrent, Option<Handle>)> {
        let limit = |rate: Option<u64>| rate.map(|r| Arc::new(RateLimit::new(r)));
        let mut config = EngineConfig {
            listen: Some(SocketAddr::new(self.bind, self.port)),
            resume_interval: Some(Duration::from_secs_f64(self.resume_every)),
            super_seed: self.super_seed,
            upload_limit: limit(self.max_upload_rate),
            download_limit: limit(max_download_rate),
            pex: !self.no_pex,
            encryption: self.encryption.engine(),
            utp: self.utp.engine(),
            upload_slots: usize::from(self.upload_slots),
            ..EngineConfig::default()
        };
        if let Some(secs) = self.choke_interval {
            config.choke_interval = Duration::from_secs_f64(secs);
        }
        if let Some(secs) = self.pex_interval {
            config.pex_interval = Duration::from_secs_f64(secs);
        }
        if let Some(secs) = self.idle_timeout {
            config.idle_timeout = Duration::from_secs_f64(secs);
        }
        if let Some(secs) = self.snub_timeout {
            config.snub_timeout = Duration::from_secs_f64(secs);
        }
        config.peer_id = peer_id();
        config.utp_socket = self.peer_port_utp().await;
        let mut dht = self.dht_plan();
        if let Some(plan) = &dht {
            let private = storage.metainfo().private;
            if !crate::dht_peers::prepare(plan, private, &mut config).await? {
                dht = None;
            }
        }
        let peer_id = config.peer_id;
        let mut tiers = storage.metainfo().tracker_tiers();
        tiers.extend(self.trackers.iter().map(|t| vec![t.clone()]));
        let torrent = Torrent::start(storage, picker, config).await?;
        for handed in found.connections {
            torrent.adopt(handed);
        }
        torrent.add_peers(found.peers);
        // With --port 0, the one the system gave (trackers refused port 0).
        let port = torrent.listen_addr().map_or(self.port, |a| a.port());
        let announcer = start(&torrent, tiers, peer_id, port, self.timing());
        if let Some(plan) = dht {
            crate::dht_peers::feed(&plan, &torrent, port).await?;
        }
        Ok((torrent, announcer))
    }

    /// The uTP socket on the peer port's number (unless `--utp off` or port 0, which the
    /// engine binds after TCP), bound once per process and before any DHT node, to which it
    /// offers its port: uTP and the node then run on one UDP socket, as in libtorrent and
    /// Transmission. None when the port is taken (the engine then says so).
    pub async fn peer_port_utp(&self) -> Option<Arc<pow_utp::UtpSocket>> {
        static PEER_PORT_UTP: tokio::sync::OnceCell<Option<Arc<pow_utp::UtpSocket>>> =
            tokio::sync::OnceCell::const_new();
        if self.utp == UtpArg::Off || self.port == 0 {
            return None;
        }
        let addr = SocketAddr::new(self.bind, self.port);
        PEER_PORT_UTP
            .get_or_init(|| async move {
                let (socket, shared) = pow_utp::UtpSocket::bind_sharing(addr).await.ok()?;
                crate::dht_peers::offer_udp(shared);
                Some(Arc::new(socket))
            })
            .await
            .clone()
    }

    /// The DHT node to run, if `--dht` or `--dht-bootstrap` asked for one.
    pub fn dht_plan(&self) -> Option<crate::dht_peers::DhtPlan> {
        self.dht.plan(self.bind, self.port)
    }

    /// Announce timing, with `--announce-min` (a test hook) as the first retry and the
    /// shortest wait.
    pub fn timing(&self) -> Timing {
        let mut timing = Timing::default();
        if let Some(secs) = self.announce_min {
            timing.min_interval_floor = Duration::from_secs_f64(secs);
            timing.backoff_base = Duration::from_secs_f64(secs);
        }
        timing
    }
}

/// Starts announcing `torrent` to `tiers`; `None` when there is no tracker.
pub(crate) fn start(
    torrent: &Torrent,
    tiers: Vec<Vec<String>>,
    peer_id: [u8; 20],
    port: u16,
    timing: Timing,
) -> Option<Handle> {
    // While no peer sends it anything (none connected, or only others that lack what it
    // lacks) a download asks again after `min interval`, not the regular interval (as aria2
    // does below its minimum of peers): the seed may have announced just after us, and a seed
    // that cannot dial us (behind NAT, or Transmission, which ignores loopback peers) would
    // otherwise wait for our next regular announce to be found.
    let state = {
        let torrent = torrent.clone();
        move || {
            let s = torrent.snapshot();
            State {
                progress: Progress {
                    uploaded: s.uploaded,
                    downloaded: s.downloaded,
                    left: s.left,
                },
                wants_peers: s.left > 0 && s.peers_sending == 0,
            }
        }
    };
    let torrent = torrent.clone();
    spawn(
        torrent.metainfo().info_hash.0,
        tiers,
        peer_id,
        port,
        timing,
        state,
        move |peers| torrent.add_peers(peers),
    )
}

/// Announces an info-hash whose torrent we do not have yet (a magnet link): peers found go
/// to `found`; we say we lack everything.
pub(crate) fn start_for_peers(
    info_hash: [u8; 20],
    tiers: Vec<Vec<String>>,
    peer_id: [u8; 20],
    port: u16,
    timing: Timing,
    found: tokio::sync::mpsc::UnboundedSender<SocketAddr>,
) -> Option<Handle> {
    // Unknown size: any non-zero `left` says "leecher" to the tracker. Every announce until
    // the metadata comes is for peers (the loop stops then).
    let state = || State {
        progress: Progress {
            uploaded: 0,
            downloaded: 0,
            left: 1 << 30,
        },
        wants_peers: true,
    };
    spawn(
        info_hash,
        tiers,
        peer_id,
        port,
        timing,
        state,
        move |peers| {
            for peer in peers {
                let _ = found.send(peer);
            }
        },
    )
}

fn spawn(
    info_hash: [u8; 20],
    tiers: Vec<Vec<String>>,
    peer_id: [u8; 20],
    port: u16,
    timing: Timing,
    state: impl Fn() -> State + Send + Sync + 'static,
    on_peers: impl Fn(Vec<SocketAddr>) + Send + 'static,
) -> Option<Handle> {
    if tiers.iter().all(Vec::is_empty) {
        return None;
    }
    let client = Arc::new(Client::new(ClientConfig::default()));
    let tiers = Tiers::new(tiers, &mut rand::rng());
    let announcer = Announcer::new(client, tiers, info_hash, peer_id, port);
    let state: Arc<StateFn> = Arc::new(state);
    let (progress_tx, progress_rx) = tokio::sync::watch::channel(state().progress);
    let progress_tx = Arc::new(progress_tx);
    let mut handle = announcer::spawn(announcer, progress_rx, timing);
    let mut updates = std::mem::replace(
        &mut handle.updates,
        tokio::sync::mpsc::unbounded_channel().1,
    );
    let (feed, feed_tx) = (state.clone(), progress_tx.clone());
    let reannouncer = handle.reannouncer();
    let feeder = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                update = updates.recv() => match update {
                    Some(Update::Peers { url, peers, next_in, .. }) => {
                        tracing::info!("{url}: {} peers, next announce in {next_in:?}", peers.len());
                        on_peers(peers);
                    }
                    Some(Update::Failed { error, retry_in, .. }) => {
                        eprintln!("pow: tracker: {error} (retry in {}s)", retry_in.as_secs());
                    }
                    Some(Update::Stopped) | None => return,
                },
                _ = tick.tick() => {
                    let now = feed();
                    let _ = feed_tx.send(now.progress);
                    if now.wants_peers {
                        reannouncer.reannounce();
                    }
                }
            }
        }
    });
    Some(Handle {
        handle,
        feeder,
        state,
        progress_tx,
    })
}

/// What the announce loop is fed each second: the counters to send, and whether to announce
/// again as soon as `min interval` allows.
struct State {
    progress: Progress,
    wants_peers: bool,
}

type StateFn = dyn Fn() -> State + Send + Sync;

pub struct Handle {
    handle: AnnounceHandle,
    feeder: tokio::task::JoinHandle<()>,
    /// Read afresh for `completed` and `stopped`: the feeder's copy is up to a second old, and
    /// a tracker told `completed` with bytes still left counts a seed as a leecher until its
    /// next announce.
    state: Arc<StateFn>,
    progress_tx: Arc<tokio::sync::watch::Sender<Progress>>,
}

impl Handle {
    pub fn completed(&self) {
        self.refresh();
        self.handle.completed();
    }

    /// Sends `stopped` (bounded by the announcer's stop timeout) and ends the loop.
    pub async fn stop(self) {
        self.feeder.abort();
        self.refresh();
        self.handle.stop().await;
    }

    fn refresh(&self) {
        let _ = self.progress_tx.send((self.state)().progress);
    }
}

#[cfg(test)]
mod tests {
    use super::{bytes_per_second, peer_address, positive_seconds};

    #[test]
    fn upload_rates_take_binary_suffixes() {
        assert_eq!(bytes_per_second("1000"), Ok(1000));
        assert_eq!(bytes_per_second("500K"), Ok(500 << 10));
        assert_eq!(bytes_per_second("32m"), Ok(32 << 20));
        assert_eq!(bytes_per_second("2G"), Ok(2 << 30));
        for bad in ["", "0", "-5M", "1.5M", "10X", "M", "99999999999999G"] {
            assert!(bytes_per_second(bad).is_err(), "{bad}");
        }
    }

    /// Each becomes a `Duration`: what one cannot hold is refused here, not a panic later.
    #[test]
    fn seconds_options_fit_a_duration() {
        assert_eq!(positive_seconds("0.25"), Ok(0.25));
        for bad in ["0", "-2", "NaN", "inf", "1e20", "x"] {
            assert!(positive_seconds(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn peers_given_by_hand_must_be_dialable() {
        assert_eq!(
            peer_address("[::1]:6881"),
            Ok("[::1]:6881".parse().unwrap())
        );
        for bad in [
            "127.0.0.1:0",
            "0.0.0.0:6881",
            "224.0.0.1:6881",
            "[::]:1",
            "x:1",
            "1.2.3.4",
        ] {
            assert!(peer_address(bad).is_err(), "{bad}");
        }
    }
}
