//! The server's data directory:
//!
//! ```text
//! DIR/incoming/            uploads being received (emptied at start)
//! DIR/content/<md5>/NAME   a dataset's bytes (the torrent's single file)
//! DIR/datasets/<md5>.json  what the page lists about it
//! DIR/torrents/<md5>.torrent  the torrent store, served at /torrents/
//! ```
//!
//! Publishing writes content, then the record, then the torrent (each by rename after fsync;
//! the torrent never over one already there). A dataset exists once its record and its torrent
//! are both there: the torrent written last, or, for bytes whose torrent was put into the store
//! before (PUT), the record. A record without its torrent, and content without its record, are
//! what a crash left and are removed at the next start, as are temporary files never renamed.

use crate::upload::Received;
use pow_datasource::loader::{remove_interrupted_writes, write_atomically, write_new};
use pow_datasource::torrent_store::IndexEntry;
use pow_metainfo::create::{create, CreateOptions};
use pow_metainfo::Metainfo;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

/// One published dataset, as stored in `datasets/<md5>.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Dataset {
    /// MD5 of the content, hex: the dataset's identity.
    pub md5: String,
    pub sha256: String,
    /// The stored file name (derived from the uploaded name, never a client path).
    pub name: String,
    pub size: u64,
    pub info_hash: String,
    pub torrent_file_name: String,
    #[serde(default)]
    pub description: String,
    /// Seconds since the epoch.
    pub uploaded_at: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Published {
    New,
    /// The same bytes were published before: nothing changed.
    Existing,
}

#[derive(Debug, thiserror::Error)]
pub enum LibraryError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot create the torrent: {0}")]
    Create(#[from] pow_metainfo::create::CreateError),
    #[error("{0}")]
    Store(#[from] pow_datasource::Error),
    #[error("{0}")]
    Invalid(String),
    /// A torrent given by PUT that the store does not take (its name or its bytes): the
    /// client's to fix, and told as it is.
    #[error("{0}")]
    BadTorrent(String),
    /// The name is taken by a torrent with other bytes (made with other options: the name is
    /// the content's MD5); the store keeps the one it has.
    #[error("{0}")]
    Conflict(String),
}

impl LibraryError {
    /// The disk (or the user's quota) had no room for a write, wherever in the causes.
    pub fn is_disk_full(&self) -> bool {
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(self);
        while let Some(error) = cause {
            if error
                .downcast_ref::<std::io::Error>()
                .is_some_and(pow_storage::is_disk_full)
            {
                return true;
            }
            cause = error.source();
        }
        false
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> LibraryError + '_ {
    move |source| LibraryError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Moves a received upload to `path` (its bytes synced first), where it is kept.
fn move_into_place(file: crate::upload::TempFile, path: &Path) -> Result<(), LibraryError> {
    let temp = file.path().to_path_buf();
    std::fs::File::open(&temp)
        .and_then(|f| f.sync_all())
        .map_err(io(&temp))?;
    std::fs::rename(&temp, path).map_err(io(path))?;
    file.forget();
    Ok(())
}

pub struct Library {
    root: PathBuf,
    /// Trackers put into every torrent created here.
    trackers: Vec<String>,
    /// This server's public base URL: torrents created here name it as their web seed
    /// (`<base>/content/<md5>/`).
    web_seed_base: Option<String>,
    datasets: RwLock<BTreeMap<String, Dataset>>,
    /// Each dataset's magnet link, by MD5, made once: the page and `/api/datasets` list every
    /// dataset on each request, and parsing each torrent (megabytes for a large one) each time
    /// held up the runtime. A stored torrent is never replaced, so neither is its link.
    magnets: RwLock<HashMap<String, String>>,
    /// Publishing (hash check, create, rename) and PUTs one at a time per content MD5: two
    /// uploads of the same bytes, or an upload and a PUT of its torrent, must not race for the
    /// same names. Other datasets go on meanwhile: one researcher's 16 GiB upload, hashed
    /// under its lock, does not hold back another's small one.
    publishing: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// `DATA/.lock`, held (flock) while this library is open: a second server on the same
    /// directory would clear what this one is receiving and publishing.
    _lock: std::fs::File,
}

/// Takes `DATA/.lock` for this process, or says who to blame.
fn lock_data_dir(root: &Path) -> Result<std::fs::File, LibraryError> {
    use std::os::fd::AsRawFd;
    let path = root.join(".lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io(&path))?;
    // SAFETY: flock on a file descriptor this function owns.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let error = std::io::Error::last_os_error();
        return Err(if error.raw_os_error() == Some(libc::EWOULDBLOCK) {
            LibraryError::Invalid(format!(
                "{} is in use by another pow serve (it holds {}); give this one another --data",
                root.display(),
                path.display()
            ))
        } else {
            LibraryError::Io {
                path,
                source: error,
            }
        });
    }
    Ok(file)
}

impl Library {
    /// Opens (creating) the data directory; clears what an earlier crash left half done.
    pub fn open(
        root: &Path,
        trackers: Vec<String>,
        web_seed_base: Option<String>,
    ) -> Result<Library, LibraryError> {
        let root = std::path::absolute(root).map_err(io(root))?;
        std::fs::create_dir_all(&root).map_err(io(&root))?;
        let lock = lock_data_dir(&root)?;
        for sub in ["incoming", "content", "datasets", "torrents"] {
            let dir = root.join(sub);
            std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        }
        clear_incoming(&root.join("incoming"))?;
        for sub in ["datasets", "torrents"] {
            for path in remove_interrupted_writes(&root.join(sub))? {
                tracing::info!(
                    "removed {}: a publish killed before its rename",
                    path.display()
                );
            }
        }

        let library = Library {
            root,
            trackers,
            web_seed_base,
            datasets: RwLock::new(BTreeMap::new()),
            magnets: RwLock::new(HashMap::new()),
            publishing: std::sync::Mutex::new(HashMap::new()),
            _lock: lock,
        };
        let mut datasets = BTreeMap::new();
        for md5 in hex_names(&library.root.join("datasets"), ".json")? {
            let path = library.record_path(&md5);
            let text = std::fs::read_to_string(&path).map_err(io(&path))?;
            let dataset: Dataset = serde_json::from_str(&text)
                .map_err(|e| LibraryError::Invalid(format!("{}: {e}", path.display())))?;
            let torrent = library.torrent_path(&md5);
            match std::fs::metadata(&torrent) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    if !library.recreate_torrent(&dataset)? {
                        continue;
                    }
                }
                // Not "gone": a torrent we cannot look at says nothing about its content.
                Err(e) => return Err(io(&torrent)(e)),
            }
            datasets.insert(md5, dataset);
        }
        // Content is published by its record and its torrent (the torrent written last, or
        // put there before by PUT): without both, a publish was interrupted.
        for md5 in hex_names(&library.root.join("content"), "")? {
            if !datasets.contains_key(&md5) {
                let dir = library.content_dir(&md5);
                tracing::info!("removing {}: never published (interrupted)", dir.display());
                std::fs::remove_dir_all(&dir).map_err(io(&dir))?;
            }
        }
        *library.datasets.write().expect("datasets lock") = datasets;
        Ok(library)
    }

    /// A record whose torrent is missing: a publish killed between the two (the torrent is
    /// written last), or a torrent removed by hand. The torrent is made again from the
    /// content; if its info-hash is the recorded one (every piece's SHA-1 as published), the
    /// dataset is back, and true is returned. Content that does not make that torrent (it
    /// changed, or was published under a torrent made elsewhere, with other options) is
    /// moved, with its record, to `set-aside/<md5>-<time>/`: never deleted, as it may be the
    /// only copy. A record without content is removed.
    fn recreate_torrent(&self, dataset: &Dataset) -> Result<bool, LibraryError> {
        let md5 = &dataset.md5;
        let record = self.record_path(md5);
        let content_dir = self.content_dir(md5);
        let content = content_dir.join(&dataset.name);
        let plain_name = Path::new(&dataset.name).components().count() == 1
            && matches!(
                Path::new(&dataset.name).components().next(),
                Some(std::path::Component::Normal(_))
            );
        if !plain_name || !content.is_file() {
            if content_dir.exists() {
                return self.set_aside(
                    md5,
                    "its torrent is missing and its content is not the file its record names",
                );
            }
            tracing::info!("removing {}: no torrent and no content", record.display());
            std::fs::remove_file(&record).map_err(io(&record))?;
            return Ok(false);
        }
        let created = self.create_torrent(&content, md5)?;
        if created.metainfo.info_hash.to_hex() != dataset.info_hash {
            return self.set_aside(
                md5,
                &format!(
                    "its torrent is missing, and its content makes one of info-hash {}, not the \
                     recorded {}",
                    created.metainfo.info_hash.to_hex(),
                    dataset.info_hash
                ),
            );
        }
        write_new(
            &self.torrents_dir(),
            &dataset.torrent_file_name,
            &created.bytes,
        )?;
        tracing::warn!(
            "{md5}: its torrent was missing; made again from its content (info-hash {})",
            dataset.info_hash
        );
        Ok(true)
    }

    /// Moves a dataset's content and record out of the published ones, to
    /// `set-aside/<md5>-<seconds since the epoch>/` (the same bytes may be set aside again
    /// after they were uploaded anew).
    fn set_aside(&self, md5: &str, why: &str) -> Result<bool, LibraryError> {
        let now = seconds_since_epoch();
        let mut aside = self.root.join("set-aside").join(format!("{md5}-{now}"));
        for n in 1.. {
            if !aside.exists() {
                break;
            }
            aside = self.root.join("set-aside").join(format!("{md5}-{now}.{n}"));
        }
        std::fs::create_dir_all(&aside).map_err(io(&aside))?;
        let content_dir = self.content_dir(md5);
        if content_dir.exists() {
            let to = aside.join("content");
            std::fs::rename(&content_dir, &to).map_err(io(&to))?;
        }
        let record = self.record_path(md5);
        let to = aside.join(format!("{md5}.json"));
        std::fs::rename(&record, &to).map_err(io(&to))?;
        tracing::warn!(
            "{md5} is no longer published: {why}; its content and record are kept in {}",
            aside.display()
        );
        Ok(false)
    }

    /// The server's public base URL (`--public-url`), if it has one.
    pub fn public_url(&self) -> Option<&str> {
        self.web_seed_base.as_deref()
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn torrents_dir(&self) -> PathBuf {
        self.root.join("torrents")
    }

    pub fn incoming_dir(&self) -> PathBuf {
        self.root.join("incoming")
    }

    /// Removes the part files of uploads still in flight, for a server that stops without
    /// waiting for them (their tasks may never get to remove their own).
    pub fn drop_uploads_in_flight(&self) -> Result<(), LibraryError> {
        clear_incoming(&self.incoming_dir())
    }

    pub fn content_dir(&self, md5: &str) -> PathBuf {
        self.root.join("content").join(md5)
    }

    fn record_path(&self, md5: &str) -> PathBuf {
        self.root.join("datasets").join(format!("{md5}.json"))
    }

    pub fn torrent_path(&self, md5: &str) -> PathBuf {
        self.torrents_dir().join(format!("{md5}.torrent"))
    }

    /// Every published dataset, oldest first.
    pub fn datasets(&self) -> Vec<Dataset> {
        let mut all: Vec<Dataset> = self
            .datasets
            .read()
            .expect("datasets lock")
            .values()
            .cloned()
            .collect();
        all.sort_by(|a, b| (a.uploaded_at, &a.md5).cmp(&(b.uploaded_at, &b.md5)));
        all
    }

    pub fn dataset(&self, md5: &str) -> Option<Dataset> {
        self.datasets
            .read()
            .expect("datasets lock")
            .get(md5)
            .cloned()
    }

    pub fn metainfo(&self, dataset: &Dataset) -> Result<Arc<Metainfo>, LibraryError> {
        let path = self.torrent_path(&dataset.md5);
        Metainfo::from_file(&path)
            .map(Arc::new)
            .map_err(|e| LibraryError::Invalid(format!("{}: {e}", path.display())))
    }

    /// The dataset's magnet link ("" if its torrent cannot be read).
    pub fn magnet(&self, dataset: &Dataset) -> String {
        if let Some(link) = self.magnets.read().expect("magnets lock").get(&dataset.md5) {
            return link.clone();
        }
        match self.metainfo(dataset) {
            Ok(metainfo) => {
                let link = crate::magnet_link(&metainfo);
                self.magnets
                    .write()
                    .expect("magnets lock")
                    .insert(dataset.md5.clone(), link.clone());
                link
            }
            Err(e) => {
                tracing::warn!("{}: no magnet link: {e}", dataset.md5);
                String::new()
            }
        }
    }

    /// The store's `index.json`: every torrent in it, with what is known of each.
    pub fn index(&self) -> Result<Vec<IndexEntry>, LibraryError> {
        let datasets = self.datasets.read().expect("datasets lock").clone();
        let mut entries = Vec::new();
        for md5 in hex_names(&self.torrents_dir(), ".torrent")? {
            let dataset = datasets.get(&md5);
            entries.push(IndexEntry {
                name: format!("{md5}.torrent"),
                description: dataset
                    .map(|d| d.description.clone())
                    .filter(|d| !d.is_empty()),
                info_hash: dataset.map(|d| d.info_hash.clone()),
                size: dataset.map(|d| d.size),
            });
        }
        Ok(entries)
    }

    /// Makes a dataset of a received upload: moves it into place, creates and stores its
    /// torrent. The same bytes published again return the existing dataset.
    pub async fn publish(
        self: &Arc<Self>,
        received: Received,
        description: String,
    ) -> Result<(Dataset, Published), LibraryError> {
        let one_at_a_time = self.publishing(&received.md5).await;
        if let Some(existing) = self.dataset(&received.md5) {
            return Ok((existing, Published::Existing));
        }
        let library = self.clone();
        // The lock goes with the blocking work, which runs to its end whether or not this
        // future is still awaited, and the dataset is listed there: a caller dropped midway
        // (a client that hung up) must leave neither a published dataset unlisted nor its
        // names unguarded.
        let dataset = tokio::task::spawn_blocking(move || {
            let _one_at_a_time = one_at_a_time;
            let dataset = library.publish_blocking(received, description)?;
            library
                .datasets
                .write()
                .expect("datasets lock")
                .insert(dataset.md5.clone(), dataset.clone());
            Ok::<_, LibraryError>(dataset)
        })
        .await
        .map_err(|e| LibraryError::Invalid(format!("publishing panicked: {e}")))??;
        Ok((dataset, Published::New))
    }

    /// Puts a new upload of `dataset`'s bytes (the same size, MD5 and SHA-256) in place of its
    /// content: uploading the original again is how a researcher repairs a dataset whose seed
    /// failed, its content damaged or gone on disk. The upload was dropped ("existing") and
    /// the dataset stayed unseeded until someone replaced the file by hand. The caller starts
    /// the seed again, which checks the content.
    pub async fn restore(
        self: &Arc<Self>,
        received: Received,
        dataset: &Dataset,
    ) -> Result<(), LibraryError> {
        if (received.size, &received.sha256) != (dataset.size, &dataset.sha256) {
            return Err(LibraryError::Conflict(format!(
                "this upload has the MD5 of {} but not its SHA-256 or size; nothing was replaced",
                dataset.md5
            )));
        }
        let one_at_a_time = self.publishing(&received.md5).await;
        let content_dir = self.content_dir(&dataset.md5);
        let content_path = content_dir.join(&dataset.name);
        tokio::task::spawn_blocking(move || {
            let _one_at_a_time = one_at_a_time;
            std::fs::create_dir_all(&content_dir).map_err(io(&content_dir))?;
            move_into_place(received.file, &content_path)?;
            std::fs::File::open(&content_dir)
                .and_then(|d| d.sync_all())
                .map_err(io(&content_dir))
        })
        .await
        .map_err(|e| LibraryError::Invalid(format!("restoring panicked: {e}")))?
    }

    /// Waits for the publishing lock of content `md5` (see [`Library::publishing`]).
    async fn publishing(&self, md5: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut locks = self.publishing.lock().expect("publishing locks");
            // Locks nobody holds or waits for (the map's is the only reference) are dropped.
            locks.retain(|_, lock| Arc::strong_count(lock) > 1);
            locks.entry(md5.to_string()).or_default().clone()
        };
        lock.lock_owned().await
    }

    fn publish_blocking(
        &self,
        received: Received,
        description: String,
    ) -> Result<Dataset, LibraryError> {
        self.publish_storing_with(received, description, write_new)
    }

    /// [`Library::publish_blocking`], the torrent stored by `write_torrent` (as [`write_new`]):
    /// a test's fails after the torrent is linked, as a failed fsync of the store's directory
    /// does, which no file system a test can mount is made to do.
    fn publish_storing_with(
        &self,
        received: Received,
        description: String,
        write_torrent: impl FnOnce(&Path, &str, &[u8]) -> pow_datasource::Result<bool>,
    ) -> Result<Dataset, LibraryError> {
        let md5 = received.md5.clone();
        // A torrent put here for these bytes (by `pow publish`, with the token) is kept: the
        // store never replaces one, and records elsewhere name it. The upload is published
        // under it, as long as it describes exactly these bytes; the record is then what
        // makes the dataset visible.
        let put = self.put_torrent_for(&md5, received.size)?;
        let content_dir = self.content_dir(&md5);
        if content_dir.exists() {
            // Left by a publish that failed after the move: start it again.
            std::fs::remove_dir_all(&content_dir).map_err(io(&content_dir))?;
        }
        std::fs::create_dir_all(&content_dir).map_err(io(&content_dir))?;
        let name = put
            .as_ref()
            .map_or(received.name.clone(), |m| m.name.clone());
        let content_path = content_dir.join(&name);
        move_into_place(received.file, &content_path)?;
        // Until the dataset is published, a failure takes the moved upload away with it.
        let unpublished = Unpublished(Some(content_dir.clone()));
        // The moved file's entry and its new directory's are on disk before the record and
        // the torrent that make the dataset visible: a crash must not leave a torrent whose
        // content vanished with an unsynced directory.
        for dir in [&content_dir, content_dir.parent().expect("under content/")] {
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io(dir))?;
        }

        let (metainfo, torrent) = match put {
            Some(metainfo) => {
                self.check_put_torrent(metainfo.clone(), &content_dir, &md5)?;
                (metainfo, None)
            }
            None => {
                let created = self.create_torrent(&content_path, &md5)?;
                (Arc::new(created.metainfo), Some(created.bytes))
            }
        };
        let info_hash = metainfo.info_hash.to_hex();
        // Every piece was just hashed from the content where it lies: recorded, the seed that
        // starts next takes them from the resume file. It hashed the whole upload again (a
        // second pass over a 16 GiB upload before the uploader was answered); without the
        // file it still does.
        if let Err(e) = pow_storage::Storage::new(metainfo, &content_dir)
            .and_then(|storage| storage.save_resume_complete())
        {
            tracing::warn!("{md5}: cannot save the resume file: {e}; the seed will check it all");
        }
        let torrent_file_name = format!("{md5}.torrent");
        let dataset = Dataset {
            md5: md5.clone(),
            sha256: received.sha256,
            name,
            size: received.size,
            info_hash,
            torrent_file_name: torrent_file_name.clone(),
            description,
            uploaded_at: seconds_since_epoch(),
        };
        let record = serde_json::to_vec_pretty(&dataset).expect("dataset serializes");
        write_atomically(&self.root.join("datasets"), &format!("{md5}.json"), &record)?;
        // Last: from here on the dataset exists.
        if let Some(bytes) = torrent {
            let failed = match write_torrent(&self.torrents_dir(), &torrent_file_name, &bytes) {
                Ok(true) => None,
                // Stored under its name, and only what came after failed (the fsync of the
                // store's directory): the torrent is listed and served, so the dataset is
                // published and its content stays. A crash before the directory reaches the
                // disk loses at most the torrent's name, which the next start makes again
                // from the record and the content.
                Err(e) if self.stores_torrent(&md5, &bytes) => {
                    tracing::warn!(
                        "{md5}: its torrent is stored, but {}; published all the same",
                        crate::detail(&e)
                    );
                    None
                }
                // Another writer of the directory (not this server: its PUTs take the
                // publishing lock) stored a torrent for these bytes meanwhile.
                Ok(false) => Some(LibraryError::Conflict(format!(
                    "{torrent_file_name} was stored by someone else while this upload was \
                     published; nothing was published: upload it again to publish it under \
                     that torrent"
                ))),
                Err(e) => Some(e.into()),
            };
            if let Some(e) = failed {
                let _ = std::fs::remove_file(self.record_path(&md5));
                return Err(e);
            }
        }
        unpublished.done();
        Ok(dataset)
    }

    /// Whether the store holds `bytes` as content `md5`'s torrent.
    fn stores_torrent(&self, md5: &str, bytes: &[u8]) -> bool {
        std::fs::read(self.torrent_path(md5)).is_ok_and(|stored| stored == bytes)
    }

    /// The torrent already stored for content `md5` (put there with the token), if any: it
    /// must be of one file of `size` bytes, else this upload cannot be published under it.
    fn put_torrent_for(&self, md5: &str, size: u64) -> Result<Option<Arc<Metainfo>>, LibraryError> {
        let path = self.torrent_path(md5);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(&path)(e)),
        };
        let metainfo = Metainfo::from_bytes(&bytes)
            .map_err(|e| LibraryError::Invalid(format!("{}: {e}", path.display())))?;
        let one_plain_name = matches!(
            std::path::Path::new(&metainfo.name)
                .components()
                .collect::<Vec<_>>()[..],
            [std::path::Component::Normal(_)]
        );
        let attr = metainfo.files.first().map(|f| f.attr).unwrap_or_default();
        if metainfo.multi_file
            || metainfo.total_length() != size
            || !one_plain_name
            || attr.pad
            || attr.symlink
        {
            return Err(LibraryError::Conflict(format!(
                "the store already holds {md5}.torrent, put there before, and it does not \
                 describe this upload (one file of {size} bytes); the store never replaces a \
                 torrent, so nothing was published"
            )));
        }
        Ok(Some(Arc::new(metainfo)))
    }

    /// Every piece of the stored torrent verifies against the upload moved into
    /// `content_dir`; if not, the upload is removed and refused.
    fn check_put_torrent(
        &self,
        metainfo: Arc<Metainfo>,
        content_dir: &Path,
        md5: &str,
    ) -> Result<(), LibraryError> {
        let pieces = metainfo.geometry.piece_count();
        let verified = pow_storage::Storage::new(metainfo, content_dir)
            .and_then(|storage| storage.check_existing(pow_storage::check_threads(), &|_| {}))
            .map_err(|e| LibraryError::Invalid(format!("checking the upload: {e}")))?;
        if verified.count() == pieces {
            return Ok(());
        }
        Err(LibraryError::Conflict(format!(
            "the store already holds {md5}.torrent, put there before, and only {} of its {pieces} \
             pieces verify against this upload; the store never replaces a torrent, so nothing \
             was published",
            verified.count()
        )))
    }

    /// A new torrent of the upload at `content_path`: the server's trackers, and the server
    /// as its web seed.
    fn create_torrent(
        &self,
        content_path: &Path,
        md5: &str,
    ) -> Result<pow_metainfo::create::Created, LibraryError> {
        let options = CreateOptions {
            trackers: self.trackers.iter().map(|t| vec![t.clone()]).collect(),
            web_seeds: self
                .web_seed_base
                .iter()
                .map(|base| format!("{}/content/{md5}/", base.trim_end_matches('/')))
                .collect(),
            // No date: the same bytes give the same torrent.
            creation_date: None,
            ..CreateOptions::default()
        };
        Ok(create(content_path, &options)?)
    }

    /// Stores a torrent given by `PUT` (no content here, so it is not seeded). Returns whether
    /// it was new. One at a time with other PUTs and uploads of the same name: two PUTs of
    /// other bytes under one name both found it free and both wrote it.
    pub async fn put_torrent(
        self: &Arc<Self>,
        name: String,
        bytes: axum::body::Bytes,
    ) -> Result<bool, LibraryError> {
        let md5 = name.strip_suffix(".torrent").unwrap_or(&name);
        let one_at_a_time = self.publishing(md5).await;
        let library = self.clone();
        tokio::task::spawn_blocking(move || {
            let _one_at_a_time = one_at_a_time;
            library.put_torrent_blocking(&name, &bytes)
        })
        .await
        .map_err(|e| LibraryError::Invalid(format!("storing panicked: {e}")))?
    }

    fn put_torrent_blocking(&self, name: &str, bytes: &[u8]) -> Result<bool, LibraryError> {
        self.put_torrent_storing_with(name, bytes, write_new)
    }

    /// [`Library::put_torrent_blocking`], the torrent stored by `write_torrent` (as
    /// [`Library::publish_storing_with`]).
    fn put_torrent_storing_with(
        &self,
        name: &str,
        bytes: &[u8],
        write_torrent: impl FnOnce(&Path, &str, &[u8]) -> pow_datasource::Result<bool>,
    ) -> Result<bool, LibraryError> {
        let md5 = name
            .strip_suffix(".torrent")
            .filter(|stem| is_md5_hex(stem))
            .ok_or_else(|| {
                LibraryError::BadTorrent(format!(
                    "{name:?}: a torrent in this store is named <md5 hex>.torrent"
                ))
            })?;
        Metainfo::from_bytes(bytes)
            .map_err(|e| LibraryError::BadTorrent(format!("not a valid torrent: {e}")))?;
        let path = self.torrent_path(md5);
        if path.is_file() {
            let same = std::fs::read(&path).map_err(io(&path))? == bytes;
            return if same {
                Ok(false)
            } else {
                Err(LibraryError::Conflict(format!(
                    "{name} is already stored with other bytes; the store never replaces a torrent"
                )))
            };
        }
        // Never over a torrent another writer of the directory stored meanwhile.
        match write_torrent(&self.torrents_dir(), name, bytes) {
            Ok(true) => return Ok(true),
            Ok(false) => {}
            // Stored under its name, and only the fsync of the directory after failed: it is
            // listed and served, as after an upload's publish.
            Err(e) if self.stores_torrent(md5, bytes) => {
                tracing::warn!("{name}: stored, but {}", crate::detail(&e));
                return Ok(true);
            }
            Err(e) => return Err(e.into()),
        }
        let same = std::fs::read(&path).map_err(io(&path))? == bytes;
        match same {
            true => Ok(false),
            false => Err(LibraryError::Conflict(format!(
                "{name} was stored with other bytes meanwhile; the store never replaces a torrent"
            ))),
        }
    }
}

/// A content directory being published: removed when dropped, unless [`Unpublished::done`].
struct Unpublished(Option<PathBuf>);

impl Unpublished {
    fn done(mut self) {
        self.0 = None;
    }
}

impl Drop for Unpublished {
    fn drop(&mut self) {
        if let Some(dir) = self.0.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Empties `incoming/`, where uploads are received: nothing in it is published.
fn clear_incoming(incoming: &Path) -> Result<(), LibraryError> {
    std::fs::remove_dir_all(incoming).map_err(io(incoming))?;
    std::fs::create_dir_all(incoming).map_err(io(incoming))
}

/// Now, as [`Dataset::uploaded_at`] and the set-aside directories count time (0 for a clock
/// set before 1970).
fn seconds_since_epoch() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

pub(crate) fn is_md5_hex(text: &str) -> bool {
    text.len() == 32 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Names in `dir` of the form `<md5 hex><suffix>`, as their md5 part.
fn hex_names(dir: &Path, suffix: &str) -> Result<Vec<String>, LibraryError> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let entry = entry.map_err(io(dir))?;
        if let Some(stem) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.strip_suffix(suffix))
            .filter(|stem| is_md5_hex(stem))
        {
            names.push(stem.to_string());
        }
    }
    names.sort();
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Above Linux's largest `pid_max` (2^22): no process has it.
    const DEAD_PID: u32 = 999_999_999;

    #[test]
    fn a_temporary_file_a_killed_publish_left_is_removed_at_open() {
        let root = std::env::temp_dir().join(format!("pow-library-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let torrents = root.join("torrents");
        std::fs::create_dir_all(&torrents).unwrap();
        std::fs::create_dir_all(root.join("datasets")).unwrap();
        let md5 = "0123456789abcdef0123456789abcdef";
        let left = torrents.join(format!(".{md5}.torrent.{DEAD_PID}.tmp"));
        std::fs::write(&left, b"d4:infod").unwrap();
        let record = root
            .join("datasets")
            .join(format!(".{md5}.json.{DEAD_PID}.tmp"));
        std::fs::write(&record, b"{").unwrap();
        let kept = torrents.join(".keep");
        std::fs::write(&kept, b"").unwrap();
        Library::open(&root, Vec::new(), None).unwrap();
        assert!(!left.exists() && !record.exists(), "temporary files left");
        assert!(kept.exists(), "only write_atomically's names are removed");
        std::fs::remove_dir_all(root).unwrap();
    }

    /// A dataset whose torrent went missing (removed by hand, or a publish killed between its
    /// record and its torrent) is published again from its content when that content still
    /// makes the recorded torrent, and set aside, never deleted, when it does not. Before,
    /// the record was removed and then the whole content directory with it.
    #[test]
    fn a_missing_torrent_is_made_again_or_its_content_set_aside() {
        let root = std::env::temp_dir().join(format!("pow-library-gone-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let library = Library::open(&root, Vec::new(), None).unwrap();
        let md5 = "00112233445566778899aabbccddeeff";
        let content_dir = library.content_dir(md5);
        std::fs::create_dir_all(&content_dir).unwrap();
        let content = content_dir.join("cells.zip");
        let bytes: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(&content, &bytes).unwrap();
        let created = library.create_torrent(&content, md5).unwrap();
        let dataset = Dataset {
            md5: md5.into(),
            sha256: String::new(),
            name: "cells.zip".into(),
            size: bytes.len() as u64,
            info_hash: created.metainfo.info_hash.to_hex(),
            torrent_file_name: format!("{md5}.torrent"),
            description: String::new(),
            uploaded_at: 1,
        };
        let record = library.record_path(md5);
        std::fs::write(&record, serde_json::to_vec(&dataset).unwrap()).unwrap();
        let torrent = library.torrent_path(md5);
        drop(library);

        // The torrent is missing, the content intact: made again, the same bytes.
        let library = Library::open(&root, Vec::new(), None).unwrap();
        assert_eq!(library.datasets(), std::slice::from_ref(&dataset));
        assert_eq!(std::fs::read(&torrent).unwrap(), created.bytes);
        drop(library);

        // Missing again, and the content changed: kept, set aside with its record.
        std::fs::remove_file(&torrent).unwrap();
        let mut changed = bytes.clone();
        changed[1000] ^= 1;
        std::fs::write(&content, &changed).unwrap();
        let library = Library::open(&root, Vec::new(), None).unwrap();
        assert!(library.datasets().is_empty());
        assert!(!torrent.exists() && !record.exists() && !content_dir.exists());
        let set_aside = || -> Vec<PathBuf> {
            let mut dirs: Vec<PathBuf> = std::fs::read_dir(root.join("set-aside"))
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            dirs.sort();
            dirs
        };
        let aside = set_aside();
        assert_eq!(aside.len(), 1);
        assert_eq!(
            std::fs::read(aside[0].join("content/cells.zip")).unwrap(),
            changed
        );
        assert!(aside[0].join(format!("{md5}.json")).is_file());
        drop(library);

        // The same again (uploaded anew, torrent removed, content changed): set aside beside
        // the first, which stays (a second move into the same place failed, and the server
        // did not start).
        std::fs::create_dir_all(&content_dir).unwrap();
        std::fs::write(&content, &changed).unwrap();
        std::fs::write(&record, serde_json::to_vec(&dataset).unwrap()).unwrap();
        let library = Library::open(&root, Vec::new(), None).unwrap();
        assert!(library.datasets().is_empty());
        assert_eq!(set_aside().len(), 2);
        drop(library);

        // A record with neither torrent nor content is just removed.
        std::fs::write(&record, serde_json::to_vec(&dataset).unwrap()).unwrap();
        let library = Library::open(&root, Vec::new(), None).unwrap();
        assert!(library.datasets().is_empty() && !record.exists());
        drop(library);
        std::fs::remove_dir_all(root).unwrap();
    }

    /// The store's write of a torrent that links it under its name and then fails (as it
    /// does when the fsync of the store's directory fails) has published the dataset: it is
    /// listed, with its content, now and after a restart. Before, the content and the record
    /// were removed while the torrent stayed in the store, listed in `index.json` and served.
    /// A write that fails before the link still takes the upload away, record and all.
    #[test]
    fn a_torrent_stored_before_its_directory_failed_to_sync_keeps_its_content() {
        use md5::{Digest as _, Md5};
        let root = std::env::temp_dir().join(format!("pow-library-fsync-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let library = Library::open(&root, Vec::new(), None).unwrap();
        let upload = |seed: u8| {
            let bytes: Vec<u8> = (0..100_000u32).map(|i| (i % 253) as u8 ^ seed).collect();
            let file = crate::upload::TempFile::new(&library.incoming_dir());
            std::fs::write(file.path(), &bytes).unwrap();
            let received = Received {
                file,
                name: "cells.zip".into(),
                size: bytes.len() as u64,
                md5: hex::encode(Md5::digest(&bytes)),
                sha256: String::new(),
            };
            (received, bytes)
        };
        let fsync_failed = |dir: &Path| pow_datasource::Error::Io {
            path: dir.to_path_buf(),
            source: std::io::Error::other("fsync failed"),
        };

        let (received, bytes) = upload(1);
        let md5 = received.md5.clone();
        let linked_then_failed = |dir: &Path, name: &str, bytes: &[u8]| {
            assert!(write_new(dir, name, bytes)?);
            Err(fsync_failed(dir))
        };
        let dataset = library
            .publish_storing_with(received, String::new(), linked_then_failed)
            .unwrap();
        assert!(library.torrent_path(&md5).is_file());
        let content = library.content_dir(&md5).join("cells.zip");
        assert_eq!(std::fs::read(&content).unwrap(), bytes);

        let (received, _) = upload(2);
        let unstored = received.md5.clone();
        let failed = library
            .publish_storing_with(received, String::new(), |dir, _, _| Err(fsync_failed(dir)));
        assert!(failed.is_err());
        assert!(!library.content_dir(&unstored).exists());
        assert!(!library.record_path(&unstored).exists());
        assert!(!library.torrent_path(&unstored).exists());
        drop(library);

        let library = Library::open(&root, Vec::new(), None).unwrap();
        assert_eq!(library.datasets(), [dataset]);
        assert_eq!(std::fs::read(&content).unwrap(), bytes);

        // A PUT alike: stored, though the fsync after failed (it answered 500, "nothing kept").
        let put = pow_metainfo::create::create(&content, &Default::default())
            .unwrap()
            .bytes;
        let name = format!("{}.torrent", "0".repeat(32));
        let stored = library
            .put_torrent_storing_with(&name, &put, linked_then_failed)
            .unwrap();
        assert!(stored);
        assert_eq!(
            std::fs::read(library.torrent_path(&"0".repeat(32))).unwrap(),
            put
        );
        let failed = library.put_torrent_storing_with(
            &format!("{}.torrent", "1".repeat(32)),
            &put,
            |dir, _, _| Err(fsync_failed(dir)),
        );
        assert!(failed.is_err());
        drop(library);
        std::fs::remove_dir_all(root).unwrap();
    }

    /// A PUT (or an upload: the same lock) of one dataset waits for another publish of the
    /// same MD5, and for nothing else: with one lock for all, the second PUT below hung.
    #[tokio::test]
    async fn publishing_waits_only_for_the_same_dataset() {
        let root = std::env::temp_dir().join(format!("pow-library-locks-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        let content = root.join("slice.csv");
        std::fs::write(&content, vec![7u8; 40_000]).unwrap();
        let torrent = create(&content, &CreateOptions::default()).unwrap().bytes;
        let library = Arc::new(Library::open(&root.join("data"), Vec::new(), None).unwrap());
        let busy = "0123456789abcdef0123456789abcdef";
        let other = "fedcba9876543210fedcba9876543210";
        let held = library.publishing(busy).await;

        let within = std::time::Duration::from_secs(10);
        let put = library.put_torrent(format!("{other}.torrent"), torrent.clone().into());
        let stored = tokio::time::timeout(within, put).await;
        assert!(
            matches!(stored, Ok(Ok(true))),
            "another dataset's PUT waited for the held lock: {stored:?}"
        );

        let same = tokio::spawn({
            let library = library.clone();
            let bytes = torrent.clone().into();
            async move { library.put_torrent(format!("{busy}.torrent"), bytes).await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        assert!(!same.is_finished(), "a PUT of the held name did not wait");
        drop(held);
        let stored = tokio::time::timeout(within, same).await;
        assert!(matches!(stored, Ok(Ok(Ok(true)))), "{stored:?}");
        // The locks of names nobody holds any more are dropped at the next lookup.
        let last = "0000000000000000000000000000000a";
        drop(library.publishing(last).await);
        let names: Vec<String> = library.publishing.lock().unwrap().keys().cloned().collect();
        assert_eq!(names, [last]);
        std::fs::remove_dir_all(root).unwrap();
    }
}
