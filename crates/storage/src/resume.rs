//! The resume file: which pieces are verified on disk, so a restart need not hash everything.
//!
//! It lives next to the data, in the download directory (the directory that holds the
//! torrent's top-level name), as `.<info-hash-hex>.pow-resume`: one per torrent, found again
//! without any other state, and outside the torrent's own files so it is never mistaken for
//! content. The format is plain text, one field per line:
//!
//! ```text
//! pow-resume 2
//! info-hash <40 hex digits>
//! pieces <piece count>
//! have <bitfield in wire order, hex>
//! durability synced | durability boot <boot id>
//! file <index> <length> <mtime seconds>.<nanoseconds>     (one line per file on disk)
//! sha1 <hex SHA-1 of every byte above this line>
//! ```
//!
//! Soundness (a `kill -9` at any moment must never leave a piece claimed that is not on disk):
//! a save takes a have-set whose pieces were all written before it, records each file's length
//! and mtime, writes a temporary file and renames it over the old one. So the file is always a
//! whole old or a whole new one, and every piece it claims was written first. How far that
//! holds is the save's [`Durability`]:
//! - `synced`: the content files were `fdatasync`ed first, and the resume file and its directory
//!   are `fsync`ed. Its claims survive an OS crash or power loss.
//! - `boot <id>`: nothing was synced. Until the machine restarts, every read sees what was
//!   written, on disk yet or not, so the claims hold for a killed process; the file is trusted
//!   only while `/proc/sys/kernel/random/boot_id` is the one recorded. After a reboot (an OS
//!   crash may have lost unsynced data) the next start checks everything. This is what a download
//!   saves as it goes and when it ends: syncing every 2 s and at exit cost a 256 MiB download
//!   about a fifth of its time, which no other client pays.
//!
//! On load it is trusted only if that durability holds, every file still has the recorded
//! length and mtime (nothing touched the data since: our own writes after a save change the
//! mtime too, so a crash after writing more just means a full check), and a random sample of
//! the claimed pieces hashes right.

use crate::{Storage, StorageError};
use pow_wire::Bitfield;
use rand::seq::IteratorRandom;
use sha1::{Digest, Sha1};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::UNIX_EPOCH;

/// Claimed pieces hashed on load before the file is trusted.
pub const SAMPLE_PIECES: usize = 8;

const MAGIC: &str = "pow-resume 2";

/// How far a saved resume file's claims survive (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Data synced before it is claimed: trusted after a reboot too.
    Synced,
    /// Data written, not synced: trusted until the machine restarts.
    ThisBoot,
}

/// This boot's identity (Linux); `None` elsewhere, where every save is synced.
fn current_boot_id() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|id| id.trim().to_string())
        .filter(|id| !id.is_empty() && !id.contains(char::is_whitespace))
}

/// What a resume file says of its own durability.
#[derive(Debug, PartialEq)]
enum Saved {
    Synced,
    InBoot(String),
}

/// Where a start-up have-set came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResumeSource {
    /// The resume file, after its checks passed.
    File,
    /// Every piece on disk hashed (no usable resume file).
    FullCheck,
    /// Nothing on disk yet: no resume file and no content file.
    None,
}

impl ResumeSource {
    pub fn as_str(self) -> &'static str {
        match self {
            ResumeSource::File => "file",
            ResumeSource::FullCheck => "full-check",
            ResumeSource::None => "none",
        }
    }
}

/// What is verified on disk at start-up, and how we know.
#[derive(Debug, Clone)]
pub struct Resume {
    pub have: Bitfield,
    pub source: ResumeSource,
    /// Why the resume file was not used, when there was one.
    pub rejected: Option<String>,
}

/// One file's identity as recorded: `None` when it did not exist.
pub(crate) type FileStamp = Option<(u64, u128)>;

impl Storage {
    /// `.<info-hash-hex>.pow-resume` in the download directory.
    pub fn resume_path(&self) -> PathBuf {
        resume_file_in(&self.root, &self.metainfo.info_hash.to_hex())
    }

    /// The have-set to start from: the resume file's if it passes its checks, otherwise every
    /// piece on disk hashed on `threads` threads (`progress` as for `check_existing`).
    pub fn resume_or_check(
        &self,
        threads: usize,
        progress: &(dyn Fn(u32) + Sync),
    ) -> Result<Resume, StorageError> {
        let rejected = match self.load_resume() {
            Ok((have, stamps)) => {
                self.adopt_stamps(stamps);
                return Ok(Resume {
                    have,
                    source: ResumeSource::File,
                    rejected: None,
                });
            }
            Err(LoadError::Missing) => None,
            Err(LoadError::Rejected(why)) => Some(why),
        };
        if rejected.is_none() && !self.any_file_on_disk() {
            // Every stamp is "missing", as recorded: the first save need not look again.
            self.adopt_stamps(vec![None; self.files.len()]);
            return Ok(Resume {
                have: Bitfield::new(self.metainfo.geometry.piece_count()),
                source: ResumeSource::None,
                rejected: None,
            });
        }
        Ok(Resume {
            have: self.check_existing(threads, progress)?,
            source: ResumeSource::FullCheck,
            rejected,
        })
    }

    /// Whether any file of the torrent exists. A directory found missing answers for every
    /// file in it: a fresh download of 100,000 files in 100 directories looks 100 times, not
    /// 100,000.
    fn any_file_on_disk(&self) -> bool {
        let mut missing_dirs = std::collections::HashSet::new();
        self.files.iter().filter(|f| !f.pad).any(|f| {
            let parent = f.path.parent().expect("below root");
            if missing_dirs.contains(parent) {
                return false;
            }
            if !parent.exists() {
                missing_dirs.insert(parent);
                return false;
            }
            f.path.exists()
        })
    }

    /// Takes `stamps` as every file's stamp as it is now (the start's own look at them), so
    /// the first save looks again only at the files written since.
    fn adopt_stamps(&self, stamps: Vec<FileStamp>) {
        let mut kept = self.resume_lock.lock().expect("resume lock");
        for file in &self.files {
            file.restamp.store(false, Ordering::Relaxed);
        }
        *kept = stamps;
    }

    /// Records every piece as verified, synced: for content just hashed whole from these
    /// files (a torrent made of them, or a check that found every piece good), so that the
    /// seed started next takes it from the resume file instead of hashing it all again.
    pub fn save_resume_complete(&self) -> Result<(), StorageError> {
        let pieces = self.metainfo.geometry.piece_count();
        self.save_resume(&Bitfield::full(pieces), Durability::Synced)
    }

    /// Records `have` atomically. Every piece in `have` must have been written (and verified)
    /// before this call. With [`Durability::Synced`] the data is synced here, before the file
    /// claims it; with [`Durability::ThisBoot`] nothing is synced and the file holds until the
    /// machine restarts (synced anyway where the boot cannot be identified).
    pub fn save_resume(&self, have: &Bitfield, durability: Durability) -> Result<(), StorageError> {
        let mut stamps = self.resume_lock.lock().expect("resume lock");
        let saved = match durability {
            Durability::ThisBoot => current_boot_id().map_or(Saved::Synced, Saved::InBoot),
            Durability::Synced => Saved::Synced,
        };
        let sync = saved == Saved::Synced;
        if sync {
            self.sync_files_of(have)?;
        }
        // A file's stamp is taken after the writes it vouches for (and the sync, if any): a
        // later write changes the mtime, and the file is then not trusted. Only files written
        // since the last save are looked at again, not every file of a 100,000-file torrent
        // every 2 s. A `stat`, not an open: the pool may keep fewer open.
        for (file, stamp) in self.files.iter().zip(stamps.iter_mut()) {
            if file.pad || !file.restamp.swap(false, Ordering::Acquire) {
                continue;
            }
            *stamp = match std::fs::metadata(&file.path) {
                Ok(meta) => Some((meta.len(), mtime_nanos(&meta))),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => {
                    file.restamp.store(true, Ordering::Relaxed);
                    return Err(Self::io(&file.path)(e));
                }
            };
        }
        let text = self.render(have, &saved, &stamps);
        let path = self.resume_path();
        let tmp = path.with_extension("pow-resume.tmp");
        // Made new (O_EXCL follows no link): a link planted at this predictable name in a
        // shared download directory had the save truncate and fill the file it pointed at.
        // A temp file left by a stop is removed first (a link there: the link itself).
        match std::fs::remove_file(&tmp) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(Self::io(&tmp)(e));
            }
            _ => {}
        }
        let created = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp);
        let written = created.and_then(|mut out| {
            out.write_all(text.as_bytes())?;
            if sync {
                out.sync_all()?;
            }
            Ok(())
        });
        if let Err(e) = written {
            // A full disk fails here: the old file stays whole, and no partial file is left to
            // hold the last free blocks.
            let _ = std::fs::remove_file(&tmp);
            return Err(Self::io(&tmp)(e));
        }
        std::fs::rename(&tmp, &path).map_err(Self::io(&path))?;
        if !sync {
            return Ok(());
        }
        std::fs::File::open(&self.root)
            .and_then(|dir| dir.sync_all())
            .map_err(Self::io(&self.root))
    }

    fn render(&self, have: &Bitfield, saved: &Saved, stamps: &[FileStamp]) -> String {
        let durability = match saved {
            Saved::Synced => "synced".to_string(),
            Saved::InBoot(id) => format!("boot {id}"),
        };
        let mut text = format!(
            "{MAGIC}\ninfo-hash {}\npieces {}\nhave {}\ndurability {durability}\n",
            self.metainfo.info_hash.to_hex(),
            have.len(),
            hex::encode(have.as_bytes())
        );
        for (index, stamp) in stamps.iter().enumerate() {
            if let Some((len, mtime)) = stamp {
                let (secs, nanos) = (mtime / 1_000_000_000, mtime % 1_000_000_000);
                text.push_str(&format!("file {index} {len} {secs}.{nanos:09}\n"));
            }
        }
        let sum = hex::encode(Sha1::digest(text.as_bytes()));
        text.push_str(&format!("sha1 {sum}\n"));
        text
    }

    /// Reads and checks the resume file; the have-set it claims if it can be trusted.
    fn load_resume(&self) -> Result<(Bitfield, Vec<FileStamp>), LoadError> {
        self.load_resume_in_boot(current_boot_id().as_deref())
    }

    /// [`Self::load_resume`] as if the machine's boot were `boot`: the pieces it claims, and
    /// every file's stamp (each found as recorded).
    fn load_resume_in_boot(
        &self,
        boot: Option<&str>,
    ) -> Result<(Bitfield, Vec<FileStamp>), LoadError> {
        let path = self.resume_path();
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(LoadError::Missing),
            Err(e) => return Err(LoadError::Rejected(format!("cannot read it: {e}"))),
        };
        let (have, saved, stamps) = self.parse(&text).map_err(LoadError::Rejected)?;
        if let Saved::InBoot(id) = &saved {
            if boot != Some(id.as_str()) {
                return Err(LoadError::Rejected(
                    "saved unsynced before the machine restarted (data may not have reached the disk)"
                        .into(),
                ));
            }
        }
        for (index, file) in self.files.iter().enumerate() {
            if file.pad {
                continue;
            }
            let now = std::fs::metadata(&file.path)
                .ok()
                .map(|m| (m.len(), mtime_nanos(&m)));
            if now != stamps[index] {
                return Err(LoadError::Rejected(format!(
                    "{} changed since it was saved (length or mtime)",
                    file.path.display()
                )));
            }
        }
        let geometry = &self.metainfo.geometry;
        for piece in have.ones() {
            let piece = geometry
                .piece(piece)
                .expect("bitfield sized to the torrent");
            let wrong = geometry.piece_spans(piece).iter().find_map(|s| {
                let f = &self.files[s.file];
                let state = match stamps[s.file] {
                    _ if f.pad => return None,
                    // A longer one holds the pieces in its length; its tail is not the
                    // torrent's, and is kept.
                    Some((len, _)) if len >= f.length => return None,
                    Some(_) => "shorter than the torrent says",
                    None => "missing",
                };
                Some(format!("{} is {state}", f.path.display()))
            });
            if let Some(wrong) = wrong {
                return Err(LoadError::Rejected(format!(
                    "piece {} is claimed but {wrong}",
                    piece.get()
                )));
            }
        }
        let sample = have.ones().choose_multiple(&mut rand::rng(), SAMPLE_PIECES);
        for index in sample {
            let piece = geometry.piece(index).expect("in range");
            if !self.verify_piece(piece).unwrap_or(false) {
                return Err(LoadError::Rejected(format!(
                    "claimed piece {index} fails its hash"
                )));
            }
        }
        Ok((have, stamps))
    }

    fn parse(&self, text: &str) -> Result<(Bitfield, Saved, Vec<FileStamp>), String> {
        let body_end = text
            .rfind("sha1 ")
            .ok_or_else(|| "no checksum line".to_string())?;
        let (body, sum) = text.split_at(body_end);
        if sum.trim_end() != format!("sha1 {}", hex::encode(Sha1::digest(body.as_bytes()))) {
            return Err("checksum mismatch".into());
        }
        let mut lines = body.lines();
        let mut field = |name: &str| -> Result<String, String> {
            let line = lines.next().unwrap_or_default();
            line.strip_prefix(name)
                .and_then(|v| v.strip_prefix(' '))
                .map(str::to_string)
                .ok_or_else(|| format!("expected `{name}`, found `{line}`"))
        };
        match field("pow-resume")?.as_str() {
            "2" => {}
            "1" => return Err("format 1, from an older pow".into()),
            other => return Err(format!("unknown format {other} (from a newer pow?)")),
        }
        if field("info-hash")? != self.metainfo.info_hash.to_hex() {
            return Err("saved for another torrent".into());
        }
        let pieces = self.metainfo.geometry.piece_count();
        if field("pieces")? != pieces.to_string() {
            return Err("wrong piece count".into());
        }
        let bytes = hex::decode(field("have")?).map_err(|e| format!("have: {e}"))?;
        let have = Bitfield::from_wire(&bytes, pieces).map_err(|e| format!("have: {e}"))?;
        let durability = field("durability")?;
        let saved = match durability.split_once(' ') {
            None if durability == "synced" => Saved::Synced,
            Some(("boot", id)) => Saved::InBoot(id.to_string()),
            _ => return Err(format!("bad durability `{durability}`")),
        };
        let mut stamps: Vec<FileStamp> = vec![None; self.files.len()];
        for line in lines {
            let parts: Vec<&str> = line.split(' ').collect();
            let ["file", index, len, mtime] = parts[..] else {
                return Err(format!("unexpected line `{line}`"));
            };
            let index: usize = index.parse().map_err(|_| format!("bad line `{line}`"))?;
            let len: u64 = len.parse().map_err(|_| format!("bad line `{line}`"))?;
            let (secs, nanos) = mtime
                .split_once('.')
                .ok_or_else(|| format!("bad line `{line}`"))?;
            let secs: u128 = secs.parse().map_err(|_| format!("bad line `{line}`"))?;
            let nanos: u128 = nanos.parse().map_err(|_| format!("bad line `{line}`"))?;
            let slot = stamps
                .get_mut(index)
                .ok_or_else(|| format!("no file {index}"))?;
            let stamp = secs
                .checked_mul(1_000_000_000)
                .and_then(|ns| ns.checked_add(nanos))
                .ok_or_else(|| format!("bad line `{line}`"))?;
            *slot = Some((len, stamp));
        }
        Ok((have, saved, stamps))
    }
}

#[derive(Debug)]
enum LoadError {
    Missing,
    Rejected(String),
}

fn mtime_nanos(meta: &std::fs::Metadata) -> u128 {
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos())
}

/// The resume file of the torrent with info-hash `hex` in `dir` (for tools and tests).
pub fn resume_file_in(dir: &Path, info_hash_hex: &str) -> PathBuf {
    dir.join(format!(".{info_hash_hex}.pow-resume"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_torrent::pattern_torrent;
    use pow_metainfo::Metainfo;
    use std::sync::Arc;

    /// A 10-piece torrent of 16 KiB pieces over two files, its source, and an empty download dir.
    fn setup(tag: &str) -> (PathBuf, Arc<Metainfo>, Vec<u8>) {
        let torrent = pattern_torrent(
            &format!("resume-{tag}"),
            &[("a", 100_000), ("b", 63_840)],
            16384,
        );
        (torrent.dir, torrent.metainfo, torrent.content)
    }

    fn write_pieces(storage: &Storage, content: &[u8], pieces: &[u32]) {
        for &i in pieces {
            crate::test_torrent::write_piece(storage, content, i).unwrap();
        }
    }

    fn have_of(pieces: &[u32]) -> Bitfield {
        let mut have = Bitfield::new(10);
        pieces.iter().for_each(|&i| {
            have.set(i);
        });
        have
    }

    #[test]
    fn nothing_on_disk_is_none_then_saved_state_is_trusted() {
        let (dir, metainfo, content) = setup("trust");
        let storage = Storage::new(metainfo.clone(), &dir.join("out")).unwrap();
        let start = storage.resume_or_check(1, &|_| {}).unwrap();
        assert_eq!(start.source, ResumeSource::None);
        write_pieces(&storage, &content, &[0, 3, 9]);
        storage
            .save_resume(&have_of(&[0, 3, 9]), Durability::Synced)
            .unwrap();
        assert!(storage.resume_path().exists());

        let again = Storage::new(metainfo, &dir.join("out")).unwrap();
        let resume = again.resume_or_check(1, &|_| {}).unwrap();
        assert_eq!(resume.source, ResumeSource::File, "{:?}", resume.rejected);
        assert_eq!(resume.have, have_of(&[0, 3, 9]));
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// A link planted at the temp file's name is replaced, not written through: the save
    /// truncated and filled the file it pointed at.
    #[test]
    fn a_link_at_the_temp_name_is_not_written_through() {
        let (dir, metainfo, content) = setup("planted");
        let storage = Storage::new(metainfo, &dir.join("out")).unwrap();
        write_pieces(&storage, &content, &[0]);
        let victim = dir.join("victim");
        std::fs::write(&victim, b"keep me").unwrap();
        let tmp = storage.resume_path().with_extension("pow-resume.tmp");
        std::os::unix::fs::symlink(&victim, &tmp).unwrap();
        for durability in [Durability::ThisBoot, Durability::Synced] {
            storage.save_resume(&have_of(&[0]), durability).unwrap();
        }
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep me");
        assert!(!tmp.exists() && !tmp.is_symlink());
        let text = std::fs::read_to_string(storage.resume_path()).unwrap();
        assert!(text.starts_with(MAGIC), "{text}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_fresh_start_finds_a_file_in_its_one_directory_on_disk_and_stamps_what_it_makes() {
        // Files in torrent order (sorted) in three directories.
        let torrent = pattern_torrent(
            "fresh",
            &[
                ("x/a", 70_000),
                ("y/e", 0),
                ("y/f", 30_000),
                ("z/b", 63_840),
            ],
            16384,
        );
        let out = torrent.dir.join("out");
        let storage = Storage::new(torrent.metainfo.clone(), &out).unwrap();
        assert_eq!(
            storage.resume_or_check(1, &|_| {}).unwrap().source,
            ResumeSource::None
        );
        // The zero-length e is made here and never written: its stamp must still say it
        // exists, or the next start would find it "changed".
        storage.prepare_files(None).unwrap();
        write_pieces(&storage, &torrent.content, &(0..10).collect::<Vec<_>>());
        storage
            .save_resume(&have_of(&(0..10).collect::<Vec<_>>()), Durability::ThisBoot)
            .unwrap();
        let again = Storage::new(torrent.metainfo.clone(), &out).unwrap();
        let resume = again.resume_or_check(1, &|_| {}).unwrap();
        assert_eq!(resume.source, ResumeSource::File, "{:?}", resume.rejected);

        // Only z/b on disk, its directory the last one looked at (x and y are missing).
        let set = out.join("set");
        std::fs::remove_dir_all(set.join("x")).unwrap();
        std::fs::remove_dir_all(set.join("y")).unwrap();
        std::fs::remove_file(again.resume_path()).unwrap();
        let third = Storage::new(torrent.metainfo, &out).unwrap();
        let resume = third.resume_or_check(1, &|_| {}).unwrap();
        assert_eq!(resume.source, ResumeSource::FullCheck);
        // Pieces 7-9 lie in b alone (from byte 100,000 = piece 6's middle).
        assert_eq!(resume.have, have_of(&[7, 8, 9]));
        std::fs::remove_dir_all(torrent.dir).unwrap();
    }

    #[test]
    fn a_save_restamps_the_files_written_since_and_keeps_a_file_changed_behind_its_back() {
        let (dir, metainfo, content) = setup("restamp");
        let storage = Storage::new(metainfo.clone(), &dir.join("out")).unwrap();
        // Piece 0 lies in a, piece 9 in b.
        write_pieces(&storage, &content, &[0, 9]);
        storage
            .save_resume(&have_of(&[0, 9]), Durability::ThisBoot)
            .unwrap();
        // mtimes move in clock ticks (4 ms at most): let the next writes fall in a later one.
        let tick = || std::thread::sleep(std::time::Duration::from_millis(30));
        tick();
        // Written through the storage: its new mtime is taken by the next save.
        write_pieces(&storage, &content, &[3]);
        storage
            .save_resume(&have_of(&[0, 3, 9]), Durability::ThisBoot)
            .unwrap();
        assert_eq!(storage.load_resume().unwrap().0, have_of(&[0, 3, 9]));
        // Written by someone else: the save keeps b's old stamp, so b is not trusted.
        tick();
        let b = std::fs::OpenOptions::new()
            .write(true)
            .open(storage.file_path(1))
            .unwrap();
        std::os::unix::fs::FileExt::write_all_at(&b, b"x", 10).unwrap();
        storage
            .save_resume(&have_of(&[0, 3, 9]), Durability::ThisBoot)
            .unwrap();
        let Err(LoadError::Rejected(why)) = storage.load_resume() else {
            panic!("a file changed behind the storage's back was trusted");
        };
        assert!(why.contains("/b changed"), "{why}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn an_unsynced_save_is_trusted_until_the_machine_restarts() {
        let (dir, metainfo, content) = setup("boot");
        let storage = Storage::new(metainfo.clone(), &dir.join("out")).unwrap();
        write_pieces(&storage, &content, &[0, 7]);
        storage
            .save_resume(&have_of(&[0, 7]), Durability::ThisBoot)
            .unwrap();
        let text = std::fs::read_to_string(storage.resume_path()).unwrap();
        let boot = current_boot_id().expect("Linux gives a boot id");
        assert!(
            text.contains(&format!("durability boot {boot}\n")),
            "{text}"
        );

        let again = Storage::new(metainfo, &dir.join("out")).unwrap();
        let resume = again.resume_or_check(1, &|_| {}).unwrap();
        assert_eq!(resume.source, ResumeSource::File, "{:?}", resume.rejected);
        assert_eq!(resume.have, have_of(&[0, 7]));
        // A reboot cannot be made to happen here: another boot id stands for it.
        let Err(LoadError::Rejected(why)) = again.load_resume_in_boot(Some("another-boot")) else {
            panic!("an unsynced file from another boot was trusted");
        };
        assert!(why.contains("restarted"), "{why}");
        // A synced save holds in any boot.
        again
            .save_resume(&have_of(&[0, 7]), Durability::Synced)
            .unwrap();
        assert!(again.load_resume_in_boot(Some("another-boot")).is_ok());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_short_file_holds_the_pieces_inside_it_and_a_long_one_those_in_its_length() {
        let (dir, metainfo, content) = setup("short");
        let storage = Storage::new(metainfo.clone(), &dir.join("out")).unwrap();
        write_pieces(&storage, &content, &(0..10).collect::<Vec<_>>());
        let b = storage.file_path(1);
        let set_len = |len: u64| {
            let file = std::fs::OpenOptions::new().write(true).open(b).unwrap();
            file.set_len(len).unwrap();
        };
        // a is 100,000 bytes; b, from offset 100,000, is cut to 30,000: pieces 0-6 (up to
        // 114,688) are whole, piece 7 (to 131,072) is not.
        set_len(30_000);
        let have = storage.check_existing(1, &|_| {}).unwrap();
        assert_eq!(have, have_of(&[0, 1, 2, 3, 4, 5, 6]));
        storage
            .save_resume(&have_of(&[6, 7]), Durability::Synced)
            .unwrap();
        let Err(LoadError::Rejected(why)) = storage.load_resume() else {
            panic!("a piece past the end of a short file was trusted");
        };
        assert!(why.contains("/b is shorter"), "{why}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_longer_file_holds_the_pieces_in_its_length_and_keeps_its_tail() {
        let (dir, metainfo, content) = setup("long");
        let out = dir.join("out");
        let all = have_of(&(0..10).collect::<Vec<_>>());
        let storage = Storage::new(metainfo.clone(), &out).unwrap();
        write_pieces(&storage, &content, &(0..10).collect::<Vec<_>>());
        let b = storage.file_path(1).to_path_buf();
        // Rows appended to b since (63,840 bytes in the torrent): not the torrent's, and no
        // piece lies in them. Before, b held no piece at all, and then was cut.
        let mut file = std::fs::OpenOptions::new().append(true).open(&b).unwrap();
        std::io::Write::write_all(&mut file, b"appended rows\n").unwrap();
        drop(file);
        let longer = std::fs::read(&b).unwrap();
        assert_eq!(storage.check_existing(1, &|_| {}).unwrap(), all);
        storage.save_resume(&all, Durability::Synced).unwrap();
        let again = Storage::new(metainfo.clone(), &out).unwrap();
        let resume = again.resume_or_check(1, &|_| {}).unwrap();
        assert_eq!(resume.source, ResumeSource::File, "{:?}", resume.rejected);
        assert_eq!(resume.have, all);
        again.prepare_files(None).unwrap();
        // A write into it (piece 9 lies in b) leaves the tail too.
        write_pieces(&again, &content, &[9]);
        assert_eq!(std::fs::read(&b).unwrap(), longer);
        assert_eq!(again.check_existing(1, &|_| {}).unwrap(), all);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_write_after_the_save_means_a_full_check() {
        let (dir, metainfo, content) = setup("later");
        let storage = Storage::new(metainfo.clone(), &dir.join("out")).unwrap();
        write_pieces(&storage, &content, &[1]);
        storage
            .save_resume(&have_of(&[1]), Durability::Synced)
            .unwrap();
        // As if killed after writing and verifying piece 2 but before the next save.
        std::thread::sleep(std::time::Duration::from_millis(20));
        write_pieces(&storage, &content, &[2]);

        let again = Storage::new(metainfo, &dir.join("out")).unwrap();
        let resume = again.resume_or_check(1, &|_| {}).unwrap();
        assert_eq!(resume.source, ResumeSource::FullCheck);
        assert!(resume.rejected.unwrap().contains("changed"));
        assert_eq!(resume.have, have_of(&[1, 2]));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_bad_claimed_piece_or_a_damaged_file_is_not_trusted() {
        let (dir, metainfo, content) = setup("bad");
        let out = dir.join("out");
        let storage = Storage::new(metainfo.clone(), &out).unwrap();
        write_pieces(&storage, &content, &[4, 5]);
        // Claims piece 2 (in file a, never written: zeros): the sample, all claimed pieces here,
        // finds it.
        storage
            .save_resume(&have_of(&[2, 4, 5]), Durability::Synced)
            .unwrap();
        let resume = storage.resume_or_check(1, &|_| {}).unwrap();
        assert_eq!(resume.source, ResumeSource::FullCheck);
        assert!(resume.rejected.unwrap().contains("fails its hash"));
        assert_eq!(resume.have, have_of(&[4, 5]));

        storage
            .save_resume(&have_of(&[4, 5]), Durability::Synced)
            .unwrap();
        let path = storage.resume_path();
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, text.replace("have ", "have 0")).unwrap();
        let resume = storage.resume_or_check(1, &|_| {}).unwrap();
        assert_eq!(resume.source, ResumeSource::FullCheck);
        assert_eq!(resume.rejected.as_deref(), Some("checksum mismatch"));

        // A well-formed file from an older pow says so, and the data is checked instead.
        let body = text[..text.rfind("sha1 ").unwrap()]
            .replace("pow-resume 2\n", "pow-resume 1\n")
            .lines()
            .filter(|l| !l.starts_with("durability "))
            .map(|l| format!("{l}\n"))
            .collect::<String>();
        let sum = hex::encode(Sha1::digest(body.as_bytes()));
        std::fs::write(&path, format!("{body}sha1 {sum}\n")).unwrap();
        let resume = storage.resume_or_check(1, &|_| {}).unwrap();
        assert_eq!(resume.source, ResumeSource::FullCheck);
        assert_eq!(
            resume.rejected.as_deref(),
            Some("format 1, from an older pow")
        );
        assert_eq!(resume.have, have_of(&[4, 5]));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
