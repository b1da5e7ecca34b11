//! Many torrents seeded by one process on one peer port (`pow serve`'s datasets, `pow source
//! seed`'s data sources): a session per torrent, all attached to one `SharedListener` (incoming
//! peers are routed by the info-hash of their handshake), each announced to its trackers with
//! that port, all sharing one upload limit.

use crate::announce;
use crate::dht_peers::{self, DhtPlan};
use pow_engine::{EngineConfig, RateLimit, SharedListener, Snapshot, Torrent};
use pow_metainfo::Metainfo;
use pow_picker::Picker;
use pow_storage::ResumeSource;
use pow_tracker::announcer::Timing;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

pub struct MultiSeed {
    listener: SharedListener,
    peer_id: [u8; 20],
    super_seed: bool,
    /// One bucket for every session (and, in `pow serve`, the web seed's bodies).
    upload_limit: Option<Arc<RateLimit>>,
    /// Announce URLs added to every torrent's own, each its own tier.
    extra_trackers: Vec<String>,
    /// By info-hash (hex).
    torrents: Mutex<HashMap<String, Seeding>>,
    /// Every torrent is also announced on the DHT (`--dht`).
    dht: Option<DhtPlan>,
    /// Peers each torrent uploads to at once (`--upload-slots`).
    upload_slots: usize,
    /// Set by [`MultiSeed::stop`]: a start that finishes later shuts its session down.
    stopped: AtomicBool,
}

enum Seeding {
    Starting,
    Running {
        torrent: Torrent,
        announcer: Option<announce::Handle>,
        started_from: ResumeSource,
    },
    Failed(String),
}

/// What one torrent's seeding is doing.
pub enum Status {
    Starting,
    /// How its pieces were known at the start: its resume file, or a check of every piece.
    Running(Snapshot, ResumeSource),
    Failed(String),
}

impl MultiSeed {
    pub fn new(
        listener: SharedListener,
        super_seed: bool,
        upload_limit: Option<Arc<RateLimit>>,
        extra_trackers: Vec<String>,
    ) -> MultiSeed {
        MultiSeed {
            listener,
            peer_id: pow_engine::new_peer_id(),
            super_seed,
            upload_limit,
            extra_trackers,
            torrents: Mutex::new(HashMap::new()),
            dht: None,
            upload_slots: EngineConfig::default().upload_slots,
            stopped: AtomicBool::new(false),
        }
    }

    /// Each torrent uploads to at most `slots` peers at once (its own choker, as `pow seed`).
    pub fn with_upload_slots(mut self, slots: u16) -> MultiSeed {
        self.upload_slots = usize::from(slots);
        self
    }

    /// Announces every torrent on the DHT too, with this node.
    pub fn with_dht(mut self, plan: Option<DhtPlan>) -> MultiSeed {
        self.dht = plan;
        self
    }

    /// The peer port every torrent is seeded on.
    pub fn port(&self) -> u16 {
        self.listener.local_addr().port()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Seeding>> {
        self.torrents.lock().expect("seeder lock")
    }

    pub fn status(&self, info_hash: &str) -> Option<Status> {
        Some(match self.lock().get(info_hash)? {
            Seeding::Starting => Status::Starting,
            Seeding::Running {
                torrent,
                started_from,
                ..
            } => Status::Running(torrent.snapshot(), *started_from),
            Seeding::Failed(why) => Status::Failed(why.clone()),
        })
    }

    /// Checks `metainfo`'s content in `data_dir` (or trusts its resume file) and seeds it if
    /// every piece is good; a torrent already seeded or starting is left alone. A failure is
    /// kept as the torrent's status and returned.
    pub async fn start(&self, metainfo: Arc<Metainfo>, data_dir: PathBuf) -> Result<(), String> {
        let key = metainfo.info_hash.to_hex();
        {
            let mut torrents = self.lock();
            if matches!(
                torrents.get(&key),
                Some(Seeding::Running { .. } | Seeding::Starting)
            ) {
                return Ok(());
            }
            torrents.insert(key.clone(), Seeding::Starting);
        }
        let result = self.start_checked(metainfo, data_dir).await;
        let mut torrents = self.lock();
        match result {
            Ok(running) if self.stopped.load(Ordering::SeqCst) => {
                // `stop` ran while this one was checked: it did not see the session.
                drop(torrents);
                if let Seeding::Running {
                    torrent, announcer, ..
                } = running
                {
                    torrent.shutdown();
                    if let Some(a) = announcer {
                        a.stop().await;
                    }
                }
                Err("stopped while starting".into())
            }
            Ok(running) => {
                torrents.insert(key, running);
                Ok(())
            }
            Err(why) => {
                torrents.insert(key, Seeding::Failed(why.clone()));
                Err(why)
            }
        }
    }

    async fn start_checked(
        &self,
        metainfo: Arc<Metainfo>,
        data_dir: PathBuf,
    ) -> Result<Seeding, String> {
        let (storage, resume) = {
            let metainfo = metainfo.clone();
            tokio::task::spawn_blocking(move || {
                crate::seed_cmd::resume_or_check(&metainfo, &data_dir, true)
                    .map_err(|e| e.to_string())
            })
            .await
            .map_err(|e| e.to_string())??
        };
        let have = resume.have.clone();
        if have.count() < have.len() {
            return Err(format!(
                "only {} of {} pieces verify on disk",
                have.count(),
                have.len()
            ));
        }
        let mut config = EngineConfig {
            peer_id: self.peer_id,
            listen: None,
            advertised_port: Some(self.port()),
            super_seed: self.super_seed,
            upload_limit: self.upload_limit.clone(),
            encryption: self.listener.encryption(),
            utp: self.listener.utp(),
            upload_slots: self.upload_slots,
            ..EngineConfig::default()
        };
        let mut dht = self.dht.clone();
        if let Some(plan) = &dht {
            if !dht_peers::prepare(plan, metainfo.private, &mut config)
                .await
                .map_err(|e| e.to_string())?
            {
                dht = None;
            }
        }
        let picker = Picker::new(metainfo.geometry.clone(), have);
        let torrent = Torrent::start(storage, picker, config)
            .await
            .map_err(|e| e.to_string())?;
        self.listener.attach(&torrent);
        if let Some(plan) = dht {
            dht_peers::feed(&plan, &torrent, self.port())
                .await
                .map_err(|e| e.to_string())?;
        }
        let mut tiers = metainfo.tracker_tiers();
        tiers.extend(self.extra_trackers.iter().map(|t| vec![t.clone()]));
        let announcer = announce::start(
            &torrent,
            tiers,
            self.peer_id,
            self.port(),
            Timing::default(),
        );
        // Recorded now, so a restart skips the check (a seed writes nothing later).
        if let Err(e) = torrent.save_resume(pow_storage::Durability::Synced).await {
            eprintln!(
                "pow: warning: {}: cannot save the resume file: {e}",
                metainfo.name
            );
        }
        Ok(Seeding::Running {
            torrent,
            announcer,
            started_from: resume.source,
        })
    }

    /// Stops every session (announcing `stopped`); returns what each had uploaded, by
    /// info-hash.
    pub async fn stop(&self) -> Vec<(String, u64)> {
        let running: Vec<(String, Seeding)> = {
            let mut torrents = self.lock();
            // Under the lock: a start either finished before (its session is drained here) or
            // sees the flag when it finishes.
            self.stopped.store(true, Ordering::SeqCst);
            torrents.drain().collect()
        };
        let mut uploaded = Vec::new();
        for (key, seeding) in running {
            if let Seeding::Running {
                torrent, announcer, ..
            } = seeding
            {
                uploaded.push((key, torrent.snapshot().uploaded));
                torrent.shutdown();
                if let Some(a) = announcer {
                    a.stop().await;
                }
            }
        }
        uploaded
    }
}
