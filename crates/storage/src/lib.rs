//! A torrent's content on disk: blocks written where they belong as they arrive, pieces read
//! back and SHA-1 checked, existing data checked piece by piece on start (resume).
//!
//! Every byte range goes through `metainfo::Geometry::spans`, so a run of blocks that crosses a
//! file boundary becomes one positioned vectored write (`pwritev`) per file, with no whole-file
//! buffering. Files are created on first write at their full length, their blocks allocated
//! (`fallocate`) where the file system can, else sparse; a file one write fills is just
//! written. Paths come from the metainfo's `SafePath`s joined to the output directory, and a
//! file is only opened after checking that its real parent directory (symlinks resolved) is
//! inside the output directory; missing directories are made one at a time, none through a link
//! that leads out of it. A file that is itself a symbolic link is written only if it leads
//! inside too (a dangling one never: it says where it leads), but read wherever it leads (data
//! linked in from elsewhere is seeded); a loop of links is named as one. Data that cannot be
//! written (a read-only file or mount, a running program's file) is opened to read. A file
//! longer than the torrent says holds the pieces within its length, and its tail is left alone.
//! BEP 47 pad files are never created: they read as zeros and writes to them are dropped.
//!
//! Handles are opened on first use and shared through the process's [`OpenFiles`] budget, so a
//! torrent of more files than the process may open still downloads and seeds: the least
//! recently used are closed and opened again when next needed.
//!
//! The resume file ([`resume`]) records the verified pieces so a restart can skip the full
//! check when nothing changed.
//!
//! All calls are blocking; the engine runs them on a blocking thread pool.

mod open_files;
pub mod resume;

pub use open_files::OpenFiles;
pub use resume::{Durability, Resume, ResumeSource};

use open_files::Slot;

use pow_metainfo::{Metainfo, PieceIndex};
use pow_wire::Bitfield;
use sha1::{Digest, Sha1};
use std::fs::{File, OpenOptions};
use std::io::IoSlice;
use std::mem::MaybeUninit;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

/// Threads a check of data on disk ([`Storage::check_existing`]) is given: one per core, as
/// hashing from the page cache is CPU-bound.
pub fn check_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The file system has no room left for the write, or the user's quota none.
pub fn is_disk_full(error: &std::io::Error) -> bool {
    matches!(error.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT))
}

/// Gives `handle`, a new or short file, its full length with every block allocated
/// (`fallocate`). False when the system cannot (no support, or no room: then a warning says
/// so, and the caller makes the file sparse and writes what fits).
fn allocate(handle: &File, file: &ContentFile) -> bool {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let Ok(length) = libc::off_t::try_from(file.length) else {
            return false;
        };
        // SAFETY: a valid open descriptor; fallocate only changes the file it names.
        if unsafe { libc::fallocate(handle.as_raw_fd(), 0, 0, length) } == 0 {
            return true;
        }
        let error = std::io::Error::last_os_error();
        if is_disk_full(&error) {
            tracing::warn!(
                "no room to allocate {} in full ({} bytes); writing what fits",
                file.path.display(),
                file.length
            );
        }
        false
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (handle, file);
        false
    }
}

/// `pwritev` until every byte of `parts` is written at `offset`.
/// `pread` until `buf` is full: `read_exact_at` for memory that need not be initialized.
/// With `cached_only`, each read is `preadv2(RWF_NOWAIT)`: data not in the page cache is not
/// waited for but reported as `WouldBlock` (what was read stays in `buf`, unused). A file
/// system that does not take the flag is read as without it.
fn read_exact_at(
    handle: &File,
    mut buf: &mut [MaybeUninit<u8>],
    mut offset: u64,
    cached_only: bool,
) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let mut nowait = cached_only;
    while !buf.is_empty() {
        let position = libc::off_t::try_from(offset)
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
        // SAFETY: the kernel stores at most `buf.len()` bytes into `buf`, which we hold
        // mutably for the call.
        let read = unsafe {
            if nowait {
                let part = libc::iovec {
                    iov_base: buf.as_mut_ptr().cast(),
                    iov_len: buf.len(),
                };
                libc::preadv2(handle.as_raw_fd(), &part, 1, position, libc::RWF_NOWAIT)
            } else {
                libc::pread(
                    handle.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    position,
                )
            }
        };
        match read {
            n if n > 0 => {
                buf = &mut buf[n as usize..];
                offset += n as u64;
            }
            0 => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "failed to fill whole buffer",
                ))
            }
            _ => {
                let error = std::io::Error::last_os_error();
                match error.raw_os_error() {
                    Some(libc::EAGAIN) if nowait => {
                        return Err(std::io::ErrorKind::WouldBlock.into())
                    }
                    Some(libc::EOPNOTSUPP | libc::EINVAL) if nowait => nowait = false,
                    Some(libc::EINTR) => {}
                    _ => return Err(error),
                }
            }
        }
    }
    Ok(())
}

fn write_all_vectored_at(
    handle: &File,
    mut parts: &mut [IoSlice<'_>],
    mut offset: u64,
) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // The kernel takes at most IOV_MAX (1,024 on Linux) slices per call.
    const MAX_SLICES: usize = 1024;
    IoSlice::advance_slices(&mut parts, 0);
    while !parts.is_empty() {
        let count = parts.len().min(MAX_SLICES);
        let position = libc::off_t::try_from(offset)
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
        // SAFETY: IoSlice is ABI-compatible with iovec on Unix; `count` slices are valid and
        // borrowed for the call.
        let written = unsafe {
            libc::pwritev(
                handle.as_raw_fd(),
                parts.as_ptr().cast::<libc::iovec>(),
                count as libc::c_int,
                position,
            )
        };
        match written {
            n if n > 0 => {
                offset += n as u64;
                IoSlice::advance_slices(&mut parts, n as usize);
            }
            0 => return Err(std::io::ErrorKind::WriteZero.into()),
            _ => {
                let error = std::io::Error::last_os_error();
                if error.kind() != std::io::ErrorKind::Interrupted {
                    return Err(error);
                }
            }
        }
    }
    Ok(())
}

/// The error for `path`, which cannot be reached for a loop of symbolic links (ELOOP, "Too many
/// levels of symbolic links", which read as if a link had not been followed): it names the
/// first path on the way that loops, `path` itself or a directory above it.
fn loop_error(path: &Path) -> StorageError {
    let loops = |p: &Path| {
        p.canonicalize()
            .is_err_and(|e| e.raw_os_error() == Some(libc::ELOOP))
    };
    let mut on_the_way: Vec<&Path> = path.ancestors().collect();
    on_the_way.reverse();
    let at = on_the_way.into_iter().find(|p| loops(p)).unwrap_or(path);
    let why = if at == path {
        "a loop of symbolic links at this path".to_string()
    } else {
        format!("a loop of symbolic links at {}", at.display())
    };
    StorageError::Io {
        path: path.to_path_buf(),
        // Of ELOOP's kind, for any caller that tells errors apart by it.
        source: std::io::Error::new(std::io::Error::from_raw_os_error(libc::ELOOP).kind(), why),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} resolves outside the download directory {}", path.display(), root.display())]
    OutsideRoot { path: PathBuf, root: PathBuf },
    #[error("block {begin}+{length} does not fit in piece {piece}")]
    BadBlock { piece: u32, begin: u32, length: u32 },
    #[error(
        "{} and {} are one file on this file system (names that differ only in case, where it \
         ignores case, or a hard link): a write to one would overwrite the other",
        path.display(),
        other.display()
    )]
    SameFile { path: PathBuf, other: PathBuf },
    /// A file this storage had open was removed (or renamed) behind its back. Made again for
    /// the write, it read as zeros where verified pieces had been: served to peers as they
    /// were, and vouched for by the next resume file.
    #[error(
        "{} was removed while in use, with the pieces verified in it; start again to check \
         what is on disk and fetch the rest",
        path.display()
    )]
    Vanished { path: PathBuf },
    #[error(
        "the torrent's name `{name}` is one pow gives its own files in a download directory \
         (`.<info-hash>.pow-resume`, `.pow-...`): its data would overwrite another torrent's \
         resume file, or be overwritten by it"
    )]
    ReservedName { name: String },
}

/// Names pow gives its own files in a download directory: `.<info-hash>.pow-resume` (and its
/// `.tmp`), `.<info-hash>.pow-metadata.torrent`, a base directory's `.pow-...`.
pub fn is_reserved_name(name: &str) -> bool {
    name.starts_with('.') && name.contains(".pow-")
}

impl StorageError {
    /// The disk (or the user's quota) had no room for a write.
    pub fn is_disk_full(&self) -> bool {
        matches!(self, StorageError::Io { source, .. } if is_disk_full(source))
    }

    /// The process (or the system) had no file descriptor left: a passing state, not a
    /// fault of the data.
    pub fn is_out_of_descriptors(&self) -> bool {
        matches!(self, StorageError::Io { source, .. } if open_files::is_out_of_descriptors(source))
    }
}

struct ContentFile {
    path: PathBuf,
    length: u64,
    pad: bool,
    /// Created with its blocks allocated in full ([`Storage::prepare_files`]), not sparse.
    allocate: AtomicBool,
    /// Opened (and created) on first use; closed when the pool needs room.
    slot: Arc<Slot>,
    /// Written since the last [`Storage::sync`]: its handle may have been closed since, and
    /// the sync must still reach it.
    dirty: AtomicBool,
    /// Written since the resume file's stamp of it (its size and mtime) was taken; true until
    /// the first is.
    restamp: AtomicBool,
    /// What the handle in `slot` may do: [`READ_ONLY`] or [`SIZED`]. Kept under the slot's
    /// lock.
    opened: AtomicU8,
    /// Last opened to read through a link or read-only: a reopen to read starts there.
    read_only: AtomicBool,
    /// Opened before by this storage: it was on disk, with whatever it held. A write that finds
    /// it gone does not make it again (see [`StorageError::Vanished`]).
    on_disk: AtomicBool,
}

/// The most of a piece the check of what is on disk reads at once.
const CHECK_PART: u32 = 4 << 20;

/// A handle opened to read, which only reads: a write opens the file again. (Opened to write as
/// well, a check's or a seed's handles kept the dataset's programs from running while it
/// seeded, "Text file busy", and told file watchers at each close that the file was written.)
const READ_ONLY: u8 = 0;
/// A handle opened for writing, its file given its length ([`Storage::fit_length`]).
const SIZED: u8 = 2;

impl ContentFile {
    /// After a write to the file has completed (so a sync or stamp that sees the mark
    /// covers it).
    fn mark_written(&self) {
        // A swap, not a load and a store only if false: a load could see the `true` that a
        // sync is about to clear, and that sync would not cover this write.
        self.dirty.swap(true, Ordering::AcqRel);
        self.restamp.swap(true, Ordering::AcqRel);
    }
}

/// How [`Storage::handle`] opens a file that is not open yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Open {
    /// Only if it exists.
    Existing,
    /// Made if missing (with its directories), and given its full length: allocated if
    /// [`Storage::prepare_files`] marked it, else sparse.
    Create,
    /// Made if missing for a write of the whole file, which gives it its length and blocks:
    /// no `fstat`, no `fallocate`. Those were two of a small file's five system calls, and
    /// `fallocate` a journalled block allocation of its own.
    CreateWhole,
}

/// Where [`Storage::check_parent`] found a file's directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Parent {
    Inside,
    /// Outside the root, through a link (only when reading).
    Outside,
    /// Not there (only when reading).
    Missing,
}

/// How [`Storage::handle`] opens a file, as it finds what is at its path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    /// Made new for a write that fills it ([`Open::CreateWhole`]); never through a link.
    New,
    /// Not through a symbolic link at the file's own path (such a link is followed only as
    /// [`Storage::through_link`] allows); for a write, written and made if missing.
    NoFollow,
    /// Through a symbolic link that leads inside the root; for a write, written.
    Follow,
    /// Read only, through any link.
    Read,
}

pub struct Storage {
    root: PathBuf,
    metainfo: Arc<Metainfo>,
    files: Vec<ContentFile>,
    open_files: Arc<OpenFiles>,
    /// Directories found inside the root ([`Storage::check_parent`]).
    checked_dirs: Mutex<std::collections::HashSet<PathBuf>>,
    /// The file of the torrent each file opened for writing is, by device and inode
    /// ([`Storage::claim_inode`]).
    written_inodes: Mutex<std::collections::HashMap<(u64, u64), usize>>,
    /// For each file whose path another file's equals but for case, those other files.
    case_twins: std::collections::HashMap<usize, Vec<usize>>,
    /// Resume saves run one at a time (they share a temporary file name); each file's stamp
    /// as the last save took it.
    resume_lock: Mutex<Vec<resume::FileStamp>>,
}

impl Storage {
    /// Prepares storage for `metainfo` under `root` (created if missing). Nothing else touches
    /// the disk until the first write or check.
    pub fn new(metainfo: Arc<Metainfo>, root: &Path) -> Result<Storage, StorageError> {
        Storage::with_open_files(metainfo, root, OpenFiles::global())
    }

    /// As [`Storage::new`], its handles counted in `open_files` instead of the process's pool.
    pub fn with_open_files(
        metainfo: Arc<Metainfo>,
        root: &Path,
        open_files: Arc<OpenFiles>,
    ) -> Result<Storage, StorageError> {
        // A crafted single-file torrent named `.<another info-hash>.pow-resume` in that
        // torrent's directory had its pieces written into the resume file, and each save of
        // the other torrent's resume file renamed over its verified data.
        if let Some(top) = metainfo
            .files
            .first()
            .and_then(|f| f.path.components().next())
        {
            if is_reserved_name(top) {
                return Err(StorageError::ReservedName {
                    name: top.to_string(),
                });
            }
        }
        std::fs::create_dir_all(root).map_err(|source| StorageError::Io {
            path: root.to_path_buf(),
            source,
        })?;
        let root = root.canonicalize().map_err(|source| StorageError::Io {
            path: root.to_path_buf(),
            source,
        })?;
        let files = metainfo
            .files
            .iter()
            .map(|f| ContentFile {
                path: f.path.under(&root),
                length: f.length,
                pad: f.attr.pad,
                allocate: AtomicBool::new(false),
                slot: Arc::default(),
                dirty: AtomicBool::new(false),
                restamp: AtomicBool::new(true),
                opened: AtomicU8::new(READ_ONLY),
                read_only: AtomicBool::new(false),
                on_disk: AtomicBool::new(false),
            })
            .collect::<Vec<_>>();
        let case_twins = case_twins(&metainfo);
        Ok(Storage {
            root,
            metainfo,
            case_twins,
            resume_lock: Mutex::new(vec![None; files.len()]),
            files,
            open_files,
            checked_dirs: Mutex::default(),
            written_inodes: Mutex::default(),
        })
    }

    pub fn metainfo(&self) -> &Arc<Metainfo> {
        &self.metainfo
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Path on disk of file `index`.
    pub fn file_path(&self, index: usize) -> &Path {
        &self.files[index].path
    }

    fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StorageError + '_ {
        move |source| StorageError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// The open handle of file `index`, opened as `open` says. `Ok(None)` when it does not
    /// exist and `open` is [`Open::Existing`].
    fn handle(&self, index: usize, open: Open) -> Result<Option<Arc<File>>, StorageError> {
        let write = open != Open::Existing;
        let file = &self.files[index];
        let mut slot = file.slot.handle.lock().expect("file handle lock");
        if let Some(handle) = slot.as_ref() {
            let usable = match file.opened.load(Ordering::Relaxed) {
                _ if !write => true,
                SIZED => true,
                // Opened again for the write, which may be refused.
                _ => false,
            };
            if usable {
                file.slot.touch();
                return Ok(Some(handle.clone()));
            }
        }
        // Its read-only handle is replaced: the slot is already in the pool.
        let admitted = slot.is_some();
        let parent = self.check_parent(&file.path, write)?;
        if parent == Parent::Missing {
            return Ok(None);
        }
        let must_exist = file.on_disk.load(Ordering::Relaxed);
        let open_file = |access: Access| {
            use std::os::unix::fs::OpenOptionsExt;
            let mut options = OpenOptions::new();
            options.read(true).write(write && access != Access::Read);
            match access {
                Access::New => {
                    options.create_new(true);
                }
                Access::NoFollow => {
                    options
                        .create(write && !must_exist)
                        .truncate(false)
                        .custom_flags(libc::O_NOFOLLOW);
                }
                Access::Follow | Access::Read => {}
            }
            options.open(&file.path)
        };
        let mut access = match open {
            Open::CreateWhole => Access::New,
            Open::Create => Access::NoFollow,
            // Read where it was read last time (a reopen, the pool having closed it): a seed
            // of read-only or linked data paid three opens and a `realpath` for each.
            Open::Existing
                if parent == Parent::Outside || file.read_only.load(Ordering::Relaxed) =>
            {
                Access::Read
            }
            Open::Existing => Access::NoFollow,
        };
        let mut opened = open_file(access);
        // Each of the first two is retried up to twice, each of the others once.
        for _retry in 0..5 {
            match &opened {
                Err(e) if open_files::is_out_of_descriptors(e) => {
                    self.open_files.relieve();
                }
                Err(e) if must_exist && e.kind() == std::io::ErrorKind::NotFound => break,
                Err(e) if write && e.kind() == std::io::ErrorKind::NotFound => {
                    // Its directory was removed since it was checked: make and check it again.
                    self.checked_dirs
                        .lock()
                        .expect("checked directories lock")
                        .remove(file.path.parent().expect("below root"));
                    self.check_parent(&file.path, write)?;
                }
                Err(e)
                    if access == Access::New && e.kind() == std::io::ErrorKind::AlreadyExists =>
                {
                    access = Access::NoFollow;
                }
                Err(e) if access == Access::NoFollow && e.raw_os_error() == Some(libc::ELOOP) => {
                    access = self.through_link(&file.path, write)?;
                }
                _ => break,
            }
            opened = open_file(access);
        }
        let handle = match opened {
            Ok(handle) => handle,
            Err(e) if !write && e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) if must_exist && e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StorageError::Vanished {
                    path: file.path.clone(),
                })
            }
            Err(e) => return Err(Self::io(&file.path)(e)),
        };
        file.on_disk.store(true, Ordering::Relaxed);
        if write {
            self.claim_inode(index, &handle)?;
        }
        if !write {
            file.read_only.store(
                matches!(access, Access::Read | Access::Follow),
                Ordering::Relaxed,
            );
        }
        let state = match access {
            // A write opens it again (and checks it, through a link even inside the root).
            _ if !write => READ_ONLY,
            // Just made: the write gives it its length and blocks.
            Access::New => SIZED,
            _ => {
                self.fit_length(&handle, file, open)?;
                SIZED
            }
        };
        if write && file.length == 0 {
            // It may have just been made, and is never written: its stamp must still say it
            // exists. (Any other file is restamped after a write that succeeded.)
            file.restamp.store(true, Ordering::Relaxed);
        }
        let handle = Arc::new(handle);
        *slot = Some(handle.clone());
        file.opened.store(state, Ordering::Relaxed);
        // Not while holding the slot: the pool may close others, never waiting on one.
        drop(slot);
        if admitted {
            file.slot.touch();
        } else {
            self.open_files.admit(&file.slot);
        }
        Ok(Some(handle))
    }

    /// Refuses a write to file `index` through `handle` when another file of the torrent is
    /// the same file: on a file system that ignores case (vfat, exFAT, a Samba share,
    /// casefold ext4) `README` and `readme` are one, and each one's writes overwrote the
    /// other's verified pieces, which then failed again and were fetched again, for ever.
    /// Its case twins' paths are looked at now (vfat and exFAT number inodes only while they
    /// are in memory); any other file (a hard link) is found by the inode it was opened for
    /// writing at, checked again at its path in case the inode was freed and its number reused.
    fn claim_inode(&self, index: usize, handle: &File) -> Result<(), StorageError> {
        use std::os::unix::fs::MetadataExt;
        let path = &self.files[index].path;
        let meta = handle.metadata().map_err(Self::io(path))?;
        let inode = (meta.dev(), meta.ino());
        let at_inode = |other: usize| {
            std::fs::metadata(&self.files[other].path).is_ok_and(|m| (m.dev(), m.ino()) == inode)
        };
        let same_file = |other: usize| StorageError::SameFile {
            path: path.clone(),
            other: self.files[other].path.clone(),
        };
        if let Some(twin) =
            (self.case_twins.get(&index).into_iter().flatten()).find(|&&t| at_inode(t))
        {
            return Err(same_file(*twin));
        }
        let mut claimed = self.written_inodes.lock().expect("inode claims lock");
        let owner = *claimed.entry(inode).or_insert(index);
        if owner != index {
            if at_inode(owner) {
                return Err(same_file(owner));
            }
            claimed.insert(inode, index);
        }
        Ok(())
    }

    /// Gives a short file opened for a write its length in the torrent: extended (allocated
    /// if [`Storage::prepare_files`] marked it, else sparse) unless the write fills it. A
    /// longer one is left as it is: its tail is not the torrent's, and may be someone's (rows
    /// appended to a table since it was published), so nothing of it is cut.
    fn fit_length(
        &self,
        handle: &File,
        file: &ContentFile,
        open: Open,
    ) -> Result<(), StorageError> {
        let len = handle.metadata().map_err(Self::io(&file.path))?.len();
        if len < file.length && open == Open::Create {
            let allocated = file.allocate.load(Ordering::Relaxed) && allocate(handle, file);
            if !allocated {
                // Sparse: no blocks are allocated until data is written.
                handle.set_len(file.length).map_err(Self::io(&file.path))?;
            }
        }
        Ok(())
    }

    /// How to open a file whose own path is a symbolic link (or, when a directory was replaced
    /// since its check, lies past a loop of them: `O_NOFOLLOW` says ELOOP for both). To write,
    /// only if it leads inside the root: one to a file outside (`~/.bashrc`) would take the
    /// torrent's data. A dangling one is not written through either: where its target would be
    /// made cannot be checked, and following it would make a file wherever it points (a missing
    /// `~/.ssh/authorized_keys`); the error says where it leads. To read, wherever it leads:
    /// researchers link large files into a data directory to seed them.
    fn through_link(&self, path: &Path, write: bool) -> Result<Access, StorageError> {
        let refused = |e: std::io::Error, why: String| StorageError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::new(e.kind(), why),
        };
        match path.canonicalize() {
            Ok(real) if write && self.files.iter().any(|f| f.path == real && f.path != path) => {
                // Each file's pieces would be written over the other's, each failing its
                // check in turn, and the download would never end.
                let why = format!(
                    "a symbolic link to {}, another file of this torrent: not followed to write \
                     (remove the link to download the file in its place)",
                    real.display()
                );
                Err(refused(std::io::ErrorKind::AlreadyExists.into(), why))
            }
            Ok(real) if real.starts_with(&self.root) => Ok(Access::Follow),
            _ if !write => Ok(Access::Read),
            Ok(_) => Err(StorageError::OutsideRoot {
                path: path.to_path_buf(),
                root: self.root.clone(),
            }),
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => Err(loop_error(path)),
            Err(e) => match std::fs::read_link(path) {
                Ok(target) if e.kind() == std::io::ErrorKind::NotFound => {
                    let why = format!(
                        "a symbolic link to {}, which does not exist: not followed to write \
                         (remove the link to download the file in its place)",
                        target.display()
                    );
                    Err(refused(e, why))
                }
                _ => {
                    let why = format!("a symbolic link not followed to write ({e})");
                    Err(refused(e, why))
                }
            },
        }
    }

    /// Makes sure the directory of `path` exists (with `create`, else [`Parent::Missing`] when
    /// it does not) and lies inside the root once symlinks are resolved. Each directory is
    /// checked once: checking it for every file cost a 100,000-file download 18 `stat`s and 5
    /// `readlink`s a file (now under 4 `stat`s, no `readlink`). Missing directories are made one
    /// at a time, each in one found inside the root, so none is made through a link that leads
    /// out of it. Without `create` (to read), a directory that leads out of the root is
    /// [`Parent::Outside`]: data linked into a seed's directory is read, never written.
    fn check_parent(&self, path: &Path, create: bool) -> Result<Parent, StorageError> {
        use std::io::ErrorKind::{AlreadyExists, NotADirectory, NotFound};
        let parent = path.parent().expect("below root");
        let checked = || self.checked_dirs.lock().expect("checked directories lock");
        if checked().contains(parent) {
            return Ok(Parent::Inside);
        }
        let inside = |dir: &Path| match dir.canonicalize() {
            Ok(real) if real.starts_with(&self.root) => Ok(()),
            Ok(_) => Err(StorageError::OutsideRoot {
                path: path.to_path_buf(),
                root: self.root.clone(),
            }),
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => Err(loop_error(path)),
            Err(e) => Err(Self::io(dir)(e)),
        };
        // The directories to make, deepest first, below the deepest one that exists.
        let mut missing = Vec::new();
        let mut dir = parent;
        loop {
            match inside(dir) {
                Ok(()) => break,
                Err(StorageError::OutsideRoot { .. }) if !create => return Ok(Parent::Outside),
                Err(StorageError::Io { source, .. })
                    if !create && matches!(source.kind(), NotFound | NotADirectory) =>
                {
                    return Ok(Parent::Missing);
                }
                Err(StorageError::Io { source, .. })
                    if source.kind() == NotFound && dir != self.root =>
                {
                    missing.push(dir);
                    dir = dir.parent().expect("below root");
                }
                Err(StorageError::Io { source, .. }) if source.kind() == NotFound => {
                    // The root itself was removed: made again, as at the start.
                    std::fs::create_dir_all(dir).map_err(Self::io(dir))?;
                    break;
                }
                Err(e) => return Err(e),
            }
        }
        for dir in missing.into_iter().rev() {
            match std::fs::create_dir(dir) {
                Ok(()) => {}
                // Made meanwhile by another thread, or a link: checked as any that exists.
                Err(e) if e.kind() == AlreadyExists => inside(dir)?,
                Err(e) => return Err(Self::io(dir)(e)),
            }
        }
        checked().insert(parent.to_path_buf());
        Ok(Parent::Inside)
    }

    /// Writes a block where it belongs, across file boundaries.
    pub fn write_block(
        &self,
        piece: PieceIndex,
        begin: u32,
        data: &[u8],
    ) -> Result<(), StorageError> {
        self.write_run(piece, begin, &[data])
    }

    /// Writes consecutive blocks of one piece, the first at `begin`, with one positioned
    /// vectored write per file they touch: one `pwrite` per 16 KiB block was 65,536 calls per
    /// GiB, the download's most frequent syscall by far.
    pub fn write_run(
        &self,
        piece: PieceIndex,
        begin: u32,
        blocks: &[&[u8]],
    ) -> Result<(), StorageError> {
        let geometry = &self.metainfo.geometry;
        let length: usize = blocks.iter().map(|b| b.len()).sum();
        if u64::from(begin) + length as u64 > u64::from(geometry.piece_size(piece)) {
            return Err(StorageError::BadBlock {
                piece: piece.get(),
                begin,
                length: length as u32,
            });
        }
        let offset = geometry.piece_offset(piece) + u64::from(begin);
        // Cursor over `blocks`: the block and the byte in it where the next span starts.
        let (mut block, mut within) = (0usize, 0usize);
        let mut parts: Vec<IoSlice> = Vec::with_capacity(blocks.len());
        for span in geometry.spans(offset, length as u64) {
            parts.clear();
            let mut need = span.length as usize;
            while need > 0 {
                let rest = &blocks[block][within..];
                let take = rest.len().min(need);
                parts.push(IoSlice::new(&rest[..take]));
                need -= take;
                within += take;
                if within == blocks[block].len() {
                    block += 1;
                    within = 0;
                }
            }
            let file = &self.files[span.file];
            if file.pad {
                continue;
            }
            // A file this write fills from its first byte to its last (every small file of
            // a dataset of many) gets its length and blocks from the write itself.
            let open = if span.offset == 0 && span.length == file.length {
                Open::CreateWhole
            } else {
                Open::Create
            };
            let handle = self.handle(span.file, open)?.expect("created");
            write_all_vectored_at(&handle, &mut parts, span.offset)
                .map_err(Self::io(&file.path))?;
            file.mark_written();
        }
        Ok(())
    }

    /// Reads `buf.len()` bytes of content at `offset`. Pad files read as zeros; a missing file
    /// is an error.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), StorageError> {
        // SAFETY: `read_into` stores only initialized bytes, so `buf` stays initialized.
        let buf = unsafe { &mut *(buf as *mut [u8] as *mut [MaybeUninit<u8>]) };
        self.read_into(offset, buf, false)
    }

    /// As `read_at`, into memory that need not be initialized (a send buffer's spare room,
    /// which zeroing first cost a seed 5-9% of its CPU); `Ok` means all of `buf` was filled.
    /// `cached_only`: see [`Storage::read_block_cached`].
    fn read_into(
        &self,
        offset: u64,
        buf: &mut [MaybeUninit<u8>],
        cached_only: bool,
    ) -> Result<(), StorageError> {
        let geometry = &self.metainfo.geometry;
        let mut filled = 0usize;
        for span in geometry.spans(offset, buf.len() as u64) {
            let part = &mut buf[filled..filled + span.length as usize];
            filled += span.length as usize;
            let file = &self.files[span.file];
            if file.pad {
                part.fill(MaybeUninit::new(0));
                continue;
            }
            // Opened here even for a cached-only read, as a file's first open always was: a
            // file the pool closed went to `warm` for a while, and a seed of 100,000 small
            // files thrashed (a block's warming opened more files than the pool holds; a
            // download from it took libtorrent 35 s instead of about 3).
            let handle =
                self.handle(span.file, Open::Existing)?
                    .ok_or_else(|| StorageError::Io {
                        path: file.path.clone(),
                        source: std::io::Error::from(std::io::ErrorKind::NotFound),
                    })?;
            read_exact_at(&handle, part, span.offset, cached_only).map_err(Self::io(&file.path))?;
        }
        Ok(())
    }

    /// Reads a block for upload into `buf`, which need not be initialized; `Ok` means it was
    /// filled.
    pub fn read_block(
        &self,
        piece: PieceIndex,
        begin: u32,
        buf: &mut [MaybeUninit<u8>],
    ) -> Result<(), StorageError> {
        let offset = self.block_offset(piece, begin, buf.len())?;
        self.read_into(offset, buf, false)
    }

    /// As [`Storage::read_block`], but only from the page cache: `Ok(false)` when part of the
    /// block would have to come from the device (nothing waits for it, `buf` is not filled).
    /// A seed's peer tasks read this way, so a cold disk's reads do not hold up the async
    /// runtime; [`Storage::warm`] on a blocking thread brings the blocks in. (Opening a file
    /// the pool has closed is still done here, and may wait on the device for its inode.)
    pub fn read_block_cached(
        &self,
        piece: PieceIndex,
        begin: u32,
        buf: &mut [MaybeUninit<u8>],
    ) -> Result<bool, StorageError> {
        let offset = self.block_offset(piece, begin, buf.len())?;
        match self.read_into(offset, buf, true) {
            Err(StorageError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::WouldBlock =>
            {
                Ok(false)
            }
            other => other.map(|()| true),
        }
    }

    /// Reads the blocks `(piece, begin, length)` and drops the bytes: afterwards they are in
    /// the page cache (until memory pressure evicts them). Blocks on the device.
    pub fn warm(&self, blocks: &[(PieceIndex, u32, u32)]) -> Result<(), StorageError> {
        let mut scratch = Vec::new();
        for &(piece, begin, length) in blocks {
            scratch.resize(length as usize, 0u8);
            let offset = self.block_offset(piece, begin, scratch.len())?;
            self.read_at(offset, &mut scratch)?;
        }
        Ok(())
    }

    /// Where the block starts in the content, once it is checked to lie in its piece.
    fn block_offset(
        &self,
        piece: PieceIndex,
        begin: u32,
        length: usize,
    ) -> Result<u64, StorageError> {
        let geometry = &self.metainfo.geometry;
        if u64::from(begin) + length as u64 > u64::from(geometry.piece_size(piece)) {
            return Err(StorageError::BadBlock {
                piece: piece.get(),
                begin,
                length: length as u32,
            });
        }
        Ok(geometry.piece_offset(piece) + u64::from(begin))
    }

    /// The piece's bytes as they are on disk.
    pub fn read_piece(&self, piece: PieceIndex) -> Result<Vec<u8>, StorageError> {
        let size = self.metainfo.geometry.piece_size(piece) as usize;
        let mut buf = vec![0u8; size];
        self.read_at(self.metainfo.geometry.piece_offset(piece), &mut buf)?;
        Ok(buf)
    }

    /// SHA-1 of the piece as it is on disk.
    pub fn hash_piece(&self, piece: PieceIndex) -> Result<[u8; 20], StorageError> {
        Ok(Sha1::digest(self.read_piece(piece)?).into())
    }

    /// True when the piece on disk has the hash the torrent gives.
    pub fn verify_piece(&self, piece: PieceIndex) -> Result<bool, StorageError> {
        Ok(&self.hash_piece(piece)? == self.metainfo.piece_hash(piece))
    }

    /// Checks what is already on disk, piece by piece, on `threads` threads. A piece counts only
    /// if every file it touches holds its bytes and its hash matches; a file missing or too short
    /// for it does not, and any other failure to read is returned. `progress` is called with the
    /// number of pieces checked so far (from any thread).
    pub fn check_existing(
        &self,
        threads: usize,
        progress: &(dyn Fn(u32) + Sync),
    ) -> Result<Bitfield, StorageError> {
        self.check_existing_in_order(threads, progress, &AtomicU32::new(0))
    }

    /// [`Storage::check_existing`] that also keeps `verified_prefix` at the number of leading
    /// pieces found good so far, for a reader that follows the check front to back (the
    /// loader's MD5, reading each piece while the check has just brought it into the page
    /// cache). Pieces are taken in order; the prefix stops at the first piece that fails.
    pub fn check_existing_in_order(
        &self,
        threads: usize,
        progress: &(dyn Fn(u32) + Sync),
        verified_prefix: &AtomicU32,
    ) -> Result<Bitfield, StorageError> {
        let geometry = &self.metainfo.geometry;
        let count = geometry.piece_count();
        // A file shorter than the torrent says (an interrupted copy, another client's partial
        // download) holds the pieces wholly inside it; a longer one those in its length (the
        // tail is not the torrent's). A missing one holds none; one that cannot be looked at
        // is read all the same, and the read says why.
        let worth_reading: Vec<bool> = self
            .files
            .iter()
            .map(|f| {
                if f.pad || f.length == 0 {
                    return true;
                }
                match std::fs::metadata(&f.path) {
                    Ok(m) => m.is_file(),
                    Err(e) => !matches!(
                        e.kind(),
                        std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
                    ),
                }
            })
            .collect();
        // A read that failed other than for a missing or short file: not a bad piece but data
        // that cannot be checked (unreadable, a failing disk), which the caller must hear of.
        let failed = Mutex::new(None);
        let unreadable = Mutex::new(std::collections::HashSet::new());
        let next = AtomicU32::new(0);
        let done = AtomicU32::new(0);
        // What is verified, what is checked, and how far from the start both hold.
        let found = Mutex::new((Bitfield::new(count), Bitfield::new(count), 0u32));
        verified_prefix.store(0, Ordering::Release);
        let threads = threads.clamp(1, count as usize);
        std::thread::scope(|scope| {
            for _ in 0..threads {
                scope.spawn(|| {
                    // Pieces are read and hashed a part at a time: a buffer of a whole piece
                    // per thread was 16 GiB on 32 cores for pieces of 512 MiB.
                    let part = geometry.piece_length().min(CHECK_PART) as usize;
                    let mut buf = vec![0u8; part];
                    loop {
                        let index = next.fetch_add(1, Ordering::Relaxed);
                        let Some(piece) = geometry.piece(index) else {
                            break;
                        };
                        let spans = geometry.piece_spans(piece);
                        let mut good = false;
                        if spans.iter().all(|s| worth_reading[s.file]) {
                            let size = geometry.piece_size(piece);
                            let offset = geometry.piece_offset(piece);
                            let mut hasher = Sha1::new();
                            let mut at = 0u32;
                            let mut read = Ok(());
                            while at < size && read.is_ok() {
                                let data = &mut buf[..(size - at).min(CHECK_PART) as usize];
                                read = self.read_at(offset + u64::from(at), data);
                                hasher.update(&*data);
                                at += data.len() as u32;
                            }
                            match read {
                                Ok(()) => {
                                    good = hasher.finalize().as_slice()
                                        == self.metainfo.piece_hash(piece);
                                }
                                Err(StorageError::Io { source, .. })
                                    if matches!(
                                        source.kind(),
                                        std::io::ErrorKind::NotFound
                                            | std::io::ErrorKind::UnexpectedEof
                                    ) => {}
                                // Someone else's file we may not read (a shared directory):
                                // its pieces are not held, as if it were missing.
                                Err(StorageError::Io { path, source })
                                    if source.kind() == std::io::ErrorKind::PermissionDenied =>
                                {
                                    let mut warned = unreadable.lock().expect("check lock");
                                    if warned.insert(path.clone()) {
                                        tracing::warn!(
                                            "{}: {source}; its pieces count as missing",
                                            path.display()
                                        );
                                    }
                                }
                                Err(e) => {
                                    failed.lock().expect("check lock").get_or_insert(e);
                                    next.store(count, Ordering::Relaxed);
                                    break;
                                }
                            }
                        }
                        {
                            let mut found = found.lock().expect("check lock");
                            let (have, checked, prefix) = &mut *found;
                            checked.set(index);
                            if good {
                                have.set(index);
                            }
                            let before = *prefix;
                            while *prefix < count && checked.get(*prefix) && have.get(*prefix) {
                                *prefix += 1;
                            }
                            if *prefix != before {
                                verified_prefix.store(*prefix, Ordering::Release);
                            }
                        }
                        let n = done.fetch_add(1, Ordering::Relaxed) + 1;
                        progress(n);
                    }
                });
            }
        });
        if let Some(error) = failed.into_inner().expect("check lock") {
            return Err(error);
        }
        Ok(found.into_inner().expect("check lock").0)
    }

    /// Readies the files a download fills: creates every zero-length file that is missing now
    /// (they hold no piece, so no write would create them; one already there is left alone,
    /// read-only or linked in from elsewhere as it may be), and marks the `wanted` ones (all,
    /// for `None`)
    /// to have their blocks allocated in full when their first block is written. A file only
    /// touched by a wanted file's piece stays sparse, so `--only` never fills the disk with
    /// files nobody asked for.
    ///
    /// Why allocate: writing into allocated blocks skips ext4's per-page delayed-allocation
    /// work, which cut a 1 GiB download's system time from 1.48 to 1.17 s here; the file is
    /// also laid out in one piece whatever order pieces arrive in, and a disk that cannot hold
    /// it is reported when its first block arrives rather than when the disk fills.
    pub fn prepare_files(&self, wanted: Option<&[usize]>) -> Result<(), StorageError> {
        // Looked up per file in a list, `--only '*'` over 100,000 files took 10^10 steps.
        let mut is_wanted = vec![wanted.is_none(); self.files.len()];
        for &index in wanted.unwrap_or_default() {
            if let Some(file) = is_wanted.get_mut(index) {
                *file = true;
            }
        }
        for (index, file) in self.files.iter().enumerate() {
            if file.pad {
                continue;
            }
            if file.length == 0 {
                if std::fs::symlink_metadata(&file.path).is_err() {
                    self.handle(index, Open::Create)?;
                }
            } else if is_wanted[index] {
                file.allocate.store(true, Ordering::Relaxed);
            }
        }
        Ok(())
    }

    /// Flushes the data this storage wrote to disk: every file written since the last sync,
    /// opened again if the pool closed it meanwhile (`fsync` reaches a file's pages through
    /// any handle).
    pub fn sync(&self) -> Result<(), StorageError> {
        for (index, file) in self.files.iter().enumerate() {
            if file.dirty.swap(false, Ordering::Acquire) {
                self.sync_file(index)
                    .inspect_err(|_| file.dirty.store(true, Ordering::Relaxed))?;
            }
        }
        Ok(())
    }

    /// Flushes every file holding a piece of `have`, whoever wrote it (an earlier run may have
    /// left its data unsynced). The others hold nothing the resume file claims: a file of
    /// someone else's in a shared directory that may not be read (its pieces counted missing)
    /// made every synced save fail.
    fn sync_files_of(&self, have: &Bitfield) -> Result<(), StorageError> {
        let geometry = &self.metainfo.geometry;
        for (index, file) in self.files.iter().enumerate() {
            if !file.pad && geometry.file_pieces(index).any(|piece| have.get(piece)) {
                file.dirty.store(false, Ordering::Relaxed);
                self.sync_file(index)
                    .inspect_err(|_| file.dirty.store(true, Ordering::Relaxed))?;
            }
        }
        Ok(())
    }

    fn sync_file(&self, index: usize) -> Result<(), StorageError> {
        match self.handle(index, Open::Existing)? {
            Some(handle) => handle
                .sync_data()
                .map_err(Self::io(&self.files[index].path)),
            None => Ok(()),
        }
    }
}

impl Drop for Storage {
    /// Closes this storage's files now rather than when the pool's clock passes them.
    fn drop(&mut self) {
        for file in &self.files {
            file.slot.close();
        }
    }
}

/// The files whose paths are equal but for case, each with the others ([`Storage::claim_inode`]).
fn case_twins(metainfo: &Metainfo) -> std::collections::HashMap<usize, Vec<usize>> {
    let mut by_folded: std::collections::HashMap<String, Vec<usize>> = Default::default();
    for (index, file) in metainfo.files.iter().enumerate() {
        if !file.attr.pad {
            by_folded
                .entry(file.path.as_str().to_lowercase())
                .or_default()
                .push(index);
        }
    }
    let mut twins = std::collections::HashMap::new();
    for group in by_folded.into_values().filter(|g| g.len() > 1) {
        for &index in &group {
            twins.insert(
                index,
                group.iter().copied().filter(|&i| i != index).collect(),
            );
        }
    }
    twins
}

#[cfg(test)]
pub(crate) mod test_torrent {
    use crate::{Storage, StorageError};
    use pow_metainfo::create::{create, CreateOptions};
    use pow_metainfo::Metainfo;
    use std::path::PathBuf;
    use std::sync::Arc;

    /// Writes piece `index`, cut from `content` (the whole torrent's bytes), through `storage`.
    pub(crate) fn write_piece(
        storage: &Storage,
        content: &[u8],
        index: u32,
    ) -> Result<(), StorageError> {
        let geometry = &storage.metainfo().geometry;
        let piece = geometry.piece(index).expect("in the torrent");
        let start = geometry.piece_offset(piece) as usize;
        let size = geometry.piece_size(piece) as usize;
        storage.write_block(piece, 0, &content[start..start + size])
    }

    /// A torrent `create` made of files cut, in order, from one byte pattern: the storage
    /// tests' common ground.
    pub(crate) struct PatternTorrent {
        /// Scratch directory of this test, removed first; the caller removes it at the end.
        pub dir: PathBuf,
        /// The torrent's source, `dir/src/set`: `Storage::new(metainfo, dir/src)` reads it.
        pub src: PathBuf,
        pub metainfo: Arc<Metainfo>,
        /// Every file's bytes, concatenated in torrent order.
        pub content: Vec<u8>,
    }

    pub(crate) fn pattern_torrent(
        tag: &str,
        files: &[(&str, usize)],
        piece_length: u64,
    ) -> PatternTorrent {
        let dir = std::env::temp_dir().join(format!("pow-storage-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let src = dir.join("src/set");
        std::fs::create_dir_all(&src).unwrap();
        let total: usize = files.iter().map(|(_, len)| len).sum();
        let content: Vec<u8> = (0..total as u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut start = 0;
        for (name, len) in files {
            let path = src.join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, &content[start..start + len]).unwrap();
            start += len;
        }
        let options = CreateOptions {
            piece_length: Some(piece_length),
            ..CreateOptions::default()
        };
        let metainfo = Arc::new(create(&src, &options).unwrap().metainfo);
        PatternTorrent {
            dir,
            src,
            metainfo,
            content,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_torrent::{pattern_torrent, write_piece, PatternTorrent};
    use super::*;
    use std::os::unix::fs::MetadataExt;

    /// Drops the file's clean pages from the page cache, as memory pressure would.
    fn evict(path: &std::path::Path) {
        use std::os::fd::AsRawFd;
        let file = std::fs::File::open(path).unwrap();
        file.sync_all().unwrap();
        // SAFETY: a plain system call on a file descriptor we hold.
        let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        assert_eq!(rc, 0);
    }

    /// Descriptors this process has open on `dir`'s files, as /proc lists them.
    fn descriptors_under(dir: &std::path::Path) -> usize {
        std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
            .filter(|target| target.starts_with(dir))
            .count()
    }

    #[test]
    fn a_torrent_of_more_files_than_the_pool_keeps_open_is_written_read_and_synced() {
        // 40 files of 4,000 to 11,800 bytes, 16 KiB pieces: each piece spans two to five files.
        let names: Vec<String> = (0..40).map(|i| format!("f{i:02}")).collect();
        let files: Vec<(&str, usize)> = names
            .iter()
            .enumerate()
            .map(|(i, name)| (name.as_str(), 4000 + i * 200))
            .collect();
        let PatternTorrent {
            dir,
            metainfo,
            content,
            ..
        } = pattern_torrent("pool", &files, 16384);
        let out = dir.join("out");
        let pool = OpenFiles::with_capacity(4);
        let storage = Storage::with_open_files(metainfo.clone(), &out, pool.clone()).unwrap();
        storage.prepare_files(None).unwrap();
        let geometry = &metainfo.geometry;
        let count = geometry.piece_count();
        // Rarest-first order is no order: odd pieces first, then even ones backwards.
        let order: Vec<u32> = (0..count)
            .filter(|i| i % 2 == 1)
            .chain((0..count).filter(|i| i % 2 == 0).rev())
            .collect();
        let mut most_open = 0;
        for &index in &order {
            write_piece(&storage, &content, index).unwrap();
            most_open = most_open.max(pool.open());
            assert!(
                descriptors_under(&out) <= 4,
                "{} descriptors open on the download after piece {index}",
                descriptors_under(&out)
            );
        }
        assert_eq!(most_open, 4, "the pool is used up to its capacity");
        // Every file closed by the pool is synced all the same, and every piece reads back.
        storage.sync().unwrap();
        assert!(storage
            .files
            .iter()
            .all(|f| !f.dirty.load(Ordering::Relaxed)));
        for index in 0..count {
            let piece = geometry.piece(index).unwrap();
            assert!(storage.verify_piece(piece).unwrap(), "piece {index}");
        }
        let have = storage.check_existing(2, &|_| {}).unwrap();
        assert_eq!(have.count(), count);
        assert!(descriptors_under(&out) <= 4);
        let mut concatenated = Vec::new();
        for name in &names {
            concatenated.extend(std::fs::read(out.join("set").join(name)).unwrap());
        }
        assert_eq!(concatenated, content);
        drop(storage);
        assert_eq!(
            descriptors_under(&out),
            0,
            "a dropped storage closes its files"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// A torrent named as pow's own files in a download directory is refused before anything
    /// is written: `.<B's info-hash>.pow-resume` downloaded into B's directory wrote its
    /// pieces into B's resume file, and B's next save renamed its resume file over them.
    #[test]
    fn a_torrent_named_as_a_resume_file_is_refused() {
        let dir = std::env::temp_dir().join(format!("pow-storage-reserved-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let src = dir.join("src");
        std::fs::create_dir_all(&src).unwrap();
        let out = dir.join("out");
        for name in [
            format!(".{}.pow-resume", "ab".repeat(20)),
            format!(".{}.pow-resume.tmp", "ab".repeat(20)),
            format!(".{}.pow-metadata.torrent", "ab".repeat(20)),
            ".pow-update-x".to_string(),
        ] {
            let path = src.join(&name);
            std::fs::write(&path, b"data").unwrap();
            let options = pow_metainfo::create::CreateOptions::default();
            let metainfo = Arc::new(
                pow_metainfo::create::create(&path, &options)
                    .unwrap()
                    .metainfo,
            );
            match Storage::new(metainfo, &out) {
                Err(StorageError::ReservedName { name: refused }) => assert_eq!(refused, name),
                Err(e) => panic!("{name}: {e}"),
                Ok(_) => panic!("{name}: accepted"),
            }
            assert!(!out.join(&name).exists());
        }
        for name in [".hidden", "x.pow-resume", "pow-update"] {
            let path = src.join(name);
            std::fs::write(&path, b"data").unwrap();
            let options = pow_metainfo::create::CreateOptions::default();
            let metainfo = Arc::new(
                pow_metainfo::create::create(&path, &options)
                    .unwrap()
                    .metainfo,
            );
            Storage::new(metainfo, &out).unwrap();
        }
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_directory_removed_after_its_check_is_made_again_for_the_next_file_opened_in_it() {
        let PatternTorrent {
            dir,
            metainfo,
            content,
            ..
        } = pattern_torrent(
            "removed-dir",
            &[("a", 40_000), ("b", 40_000), ("c", 40_000)],
            16384,
        );
        let out = dir.join("out");
        let storage =
            Storage::with_open_files(metainfo.clone(), &out, OpenFiles::with_capacity(1)).unwrap();
        let geometry = &metainfo.geometry;
        let write = |index: u32| write_piece(&storage, &content, index);
        write(0).unwrap();
        // c's file takes the pool's one handle: a's is closed.
        write(geometry.piece_count() - 1).unwrap();
        std::fs::remove_dir_all(out.join("set")).unwrap();
        // Piece 3 (49,152..65,536) lies in b alone, which was not opened before.
        write(3).unwrap();
        assert!(storage.verify_piece(geometry.piece(3).unwrap()).unwrap());
        // a, removed with the directory, is not made again empty for its next piece.
        assert!(matches!(write(1), Err(StorageError::Vanished { .. })));
        assert!(!out.join("set/a").exists());
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// A file removed while the storage uses it (its handle closed by the pool meanwhile) is
    /// reported at the next write to it, not made again: made again for the write, its other
    /// verified pieces read as zeros, served so, and the next resume file vouched for them
    /// (its new length and time were stamped after the write).
    #[test]
    fn a_file_removed_while_in_use_is_not_made_again_empty() {
        let PatternTorrent {
            dir,
            metainfo,
            content,
            ..
        } = pattern_torrent("removed-file", &[("a", 40_000), ("b", 40_000)], 16384);
        let out = dir.join("out");
        let storage =
            Storage::with_open_files(metainfo.clone(), &out, OpenFiles::with_capacity(1)).unwrap();
        let geometry = &metainfo.geometry;
        let write = |index: u32| write_piece(&storage, &content, index);
        write(0).unwrap();
        write(geometry.piece_count() - 1).unwrap();
        std::fs::remove_file(out.join("set/a")).unwrap();
        let error = write(1).unwrap_err();
        assert!(matches!(error, StorageError::Vanished { .. }), "{error}");
        assert!(
            error.to_string().contains("set/a was removed while in use"),
            "{error}"
        );
        assert!(!out.join("set/a").exists());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_cached_only_read_of_a_cold_block_waits_for_nothing_until_warmed() {
        let PatternTorrent {
            dir,
            src,
            metainfo,
            content,
        } = pattern_torrent("cold", &[("a", 300_000), ("b", 300_000)], 65536);
        let storage = Storage::new(metainfo.clone(), src.parent().unwrap()).unwrap();
        for name in ["a", "b"] {
            evict(&src.join(name));
        }
        // Piece 4 spans both files: 262,144..327,680.
        let piece = metainfo.geometry.piece(4).unwrap();
        let (begin, length) = (16384u32, 49152usize);
        let start = metainfo.geometry.piece_offset(piece) as usize + begin as usize;
        let mut buf = vec![MaybeUninit::<u8>::uninit(); length];
        assert!(
            !storage.read_block_cached(piece, begin, &mut buf).unwrap(),
            "evicted: not in the page cache (this needs a file system with RWF_NOWAIT, such as ext4)"
        );
        storage.warm(&[(piece, begin, length as u32)]).unwrap();
        assert!(storage.read_block_cached(piece, begin, &mut buf).unwrap());
        // SAFETY: `read_block_cached` said it filled every byte.
        let read: Vec<u8> = buf.iter().map(|b| unsafe { b.assume_init() }).collect();
        assert_eq!(read, content[start..start + length]);
        // A block past its piece is refused as by `read_block`.
        assert!(matches!(
            storage.read_block_cached(piece, 65536 - 100, &mut buf),
            Err(StorageError::BadBlock { .. })
        ));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn the_in_order_check_reports_the_verified_prefix_up_to_the_first_bad_piece() {
        let tag = "prefix";
        let t = pattern_torrent(tag, &[("a", 500_000), ("b", 548_576)], 65536);
        let storage = Storage::new(t.metainfo.clone(), t.src.parent().unwrap()).unwrap();
        let prefix = AtomicU32::new(u32::MAX);
        let have = storage
            .check_existing_in_order(2, &|_| {}, &prefix)
            .unwrap();
        assert_eq!(have.count(), 16);
        assert_eq!(
            prefix.load(Ordering::Acquire),
            16,
            "all good: the whole torrent"
        );
        // Spoil piece 9 (bytes 589,824.. lie in file b at 89,824).
        let mut b = std::fs::read(t.src.join("b")).unwrap();
        b[89_824] ^= 1;
        std::fs::write(t.src.join("b"), &b).unwrap();
        let have = storage
            .check_existing_in_order(2, &|_| {}, &prefix)
            .unwrap();
        assert_eq!(have.count(), 15);
        assert!(!have.get(9));
        assert_eq!(prefix.load(Ordering::Acquire), 9, "stops at the bad piece");
        std::fs::remove_dir_all(&t.dir).unwrap();
    }

    #[test]
    fn wanted_files_are_allocated_in_full_and_the_others_stay_sparse() {
        let PatternTorrent {
            dir,
            metainfo,
            content,
            ..
        } = pattern_torrent(
            "prepare",
            &[("a", 600_000), ("b", 448_576), ("empty", 0)],
            16384,
        );
        let index_of = |name: &str| {
            metainfo
                .files
                .iter()
                .position(|f| f.path.components().next_back() == Some(name))
                .unwrap()
        };
        let storage = Storage::new(metainfo.clone(), &dir.join("out")).unwrap();
        storage.prepare_files(Some(&[index_of("a")])).unwrap();
        let empty = storage.file_path(index_of("empty"));
        assert_eq!(std::fs::metadata(empty).unwrap().len(), 0, "created now");
        let geometry = &metainfo.geometry;
        // One block in each file: the first piece (in a) and the last (in b).
        for index in [0, geometry.piece_count() - 1] {
            write_piece(&storage, &content, index).unwrap();
        }
        let allocated = |name: &str| {
            let meta = std::fs::metadata(storage.file_path(index_of(name))).unwrap();
            (meta.len(), meta.blocks() * 512)
        };
        let (len_a, blocks_a) = allocated("a");
        assert_eq!(len_a, 600_000);
        assert!(
            blocks_a >= 600_000,
            "a is wanted: allocated in full ({blocks_a} bytes)"
        );
        let (len_b, blocks_b) = allocated("b");
        assert_eq!(len_b, 448_576);
        assert!(
            blocks_b < 100_000,
            "b is not wanted: sparse ({blocks_b} bytes)"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn files_a_write_fills_are_just_written_and_the_file_it_starts_gets_its_full_length() {
        let PatternTorrent {
            dir,
            metainfo,
            content,
            ..
        } = pattern_torrent("whole", &[("a", 100), ("b", 200), ("c", 50_000)], 16384);
        let storage = Storage::new(metainfo.clone(), &dir.join("out")).unwrap();
        storage.prepare_files(None).unwrap();
        // Piece 0 holds all of a and b and the start of c.
        write_piece(&storage, &content, 0).unwrap();
        assert_eq!(std::fs::read(storage.file_path(0)).unwrap(), content[..100]);
        assert_eq!(
            std::fs::read(storage.file_path(1)).unwrap(),
            content[100..300]
        );
        let c = std::fs::metadata(storage.file_path(2)).unwrap();
        assert_eq!(
            c.len(),
            50_000,
            "c is made at its full length at its first write"
        );
        assert!(c.blocks() * 512 >= 50_000, "and allocated in full");
        for index in 1..metainfo.geometry.piece_count() {
            write_piece(&storage, &content, index).unwrap();
        }
        let have = storage.check_existing(1, &|_| {}).unwrap();
        assert_eq!(have.count(), metainfo.geometry.piece_count());
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// Pieces larger than a check's part are read and hashed part by part, across files: a
    /// byte changed in a later part of a piece fails it, and only it.
    #[test]
    fn the_check_of_large_pieces_reads_them_a_part_at_a_time() {
        let mib = 1 << 20;
        let PatternTorrent {
            dir, src, metainfo, ..
        } = pattern_torrent("parts", &[("a", 9 * mib), ("b", 21 * mib)], 16 << 20);
        assert!(metainfo.geometry.piece_length() > 2 * CHECK_PART);
        let root = src.parent().unwrap();
        let seed = Storage::new(metainfo.clone(), root).unwrap();
        assert_eq!(seed.check_existing(2, &|_| {}).unwrap().count(), 2);
        drop(seed);
        // 10 MiB into piece 0: its third part, in file b.
        let b = src.join("b");
        let mut bytes = std::fs::read(&b).unwrap();
        bytes[mib] ^= 1;
        std::fs::write(&b, &bytes).unwrap();
        let seed = Storage::new(metainfo, root).unwrap();
        let have = seed.check_existing(2, &|_| {}).unwrap();
        assert!(!have.get(0) && have.get(1));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_block_read_for_upload_crosses_files_and_a_short_file_is_an_error_naming_it() {
        let PatternTorrent {
            dir,
            src,
            metainfo,
            content,
        } = pattern_torrent("read-block", &[("a", 600_000), ("b", 448_576)], 65536);
        // The source itself is the download: a seed's view.
        let storage = Storage::new(metainfo.clone(), src.parent().unwrap()).unwrap();
        let geometry = &metainfo.geometry;
        // Piece 9 holds 589,824..655,360: its second block starts in a and ends in b.
        let piece = geometry.piece(9).unwrap();
        let mut block = vec![MaybeUninit::<u8>::uninit(); 16384];
        storage.read_block(piece, 0x2000, &mut block).unwrap();
        let read: Vec<u8> = block.iter().map(|b| unsafe { b.assume_init() }).collect();
        assert_eq!(read, content[589_824 + 0x2000..589_824 + 0x2000 + 16384]);
        // b cut short under a running seed: the last piece cannot be read, and the error says
        // which file.
        std::fs::OpenOptions::new()
            .write(true)
            .open(src.join("b"))
            .unwrap()
            .set_len(1000)
            .unwrap();
        let last = geometry.piece(geometry.piece_count() - 1).unwrap();
        let error = storage.read_block(last, 0, &mut block).unwrap_err();
        assert!(error.to_string().contains("set/b"), "{error}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}

#[cfg(test)]
mod path_tests {
    use super::test_torrent::{pattern_torrent, write_piece, PatternTorrent};
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn a_file_linked_out_of_the_root_is_read_through_but_never_written() {
        let PatternTorrent {
            dir,
            src,
            metainfo,
            content,
        } = pattern_torrent("link-out", &[("a", 40_000), ("b", 40_000)], 16384);
        // A seed's data with a large file linked in from elsewhere: every piece is there.
        let elsewhere = dir.join("elsewhere-a");
        std::fs::rename(src.join("a"), &elsewhere).unwrap();
        symlink(&elsewhere, src.join("a")).unwrap();
        let seed = Storage::new(metainfo.clone(), src.parent().unwrap()).unwrap();
        let have = seed.check_existing(1, &|_| {}).unwrap();
        assert_eq!(have.count(), metainfo.geometry.piece_count());
        // A download whose a links to a file of someone else's: read (by the start-up check),
        // then never written, nor lengthened.
        let precious = dir.join("precious");
        std::fs::write(&precious, b"keep me").unwrap();
        let out = dir.join("out");
        std::fs::create_dir_all(out.join("set")).unwrap();
        symlink(&precious, out.join("set/a")).unwrap();
        let download = Storage::new(metainfo.clone(), &out).unwrap();
        assert_eq!(download.check_existing(1, &|_| {}).unwrap().count(), 0);
        let error = write_piece(&download, &content, 0).unwrap_err();
        assert!(matches!(error, StorageError::OutsideRoot { .. }), "{error}");
        assert!(error.to_string().contains("set/a"), "{error}");
        assert_eq!(std::fs::read(&precious).unwrap(), b"keep me");
        // b, no link, is written as ever.
        write_piece(&download, &content, metainfo.geometry.piece_count() - 1).unwrap();
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn no_directory_is_made_through_a_link_out_of_the_root() {
        let PatternTorrent {
            dir,
            src,
            metainfo,
            content,
        } = pattern_torrent("dir-out", &[("d/a", 20_000), ("d/b", 20_000)], 16384);
        let elsewhere = dir.join("elsewhere");
        std::fs::create_dir_all(&elsewhere).unwrap();
        let out = dir.join("out");
        std::fs::create_dir_all(&out).unwrap();
        symlink(&elsewhere, out.join("set")).unwrap();
        let storage = Storage::new(metainfo.clone(), &out).unwrap();
        let error = write_piece(&storage, &content, 0).unwrap_err();
        assert!(matches!(error, StorageError::OutsideRoot { .. }), "{error}");
        assert!(
            !elsewhere.join("d").exists(),
            "a directory was made outside the root"
        );
        // A seed's data directory linked in from elsewhere (`~/seeds/set -> /mnt/big/set`)
        // is read, every piece, and still never written (it was a hard error, and before that
        // every piece counted bad).
        let seeds = dir.join("seeds");
        std::fs::create_dir_all(&seeds).unwrap();
        symlink(&src, seeds.join("set")).unwrap();
        let seed = Storage::new(metainfo.clone(), &seeds).unwrap();
        let have = seed.check_existing(1, &|_| {}).unwrap();
        assert_eq!(have.count(), metainfo.geometry.piece_count());
        let error = write_piece(&seed, &content, 0).unwrap_err();
        assert!(matches!(error, StorageError::OutsideRoot { .. }), "{error}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_check_that_cannot_read_a_file_says_why() {
        let PatternTorrent {
            dir, src, metainfo, ..
        } = pattern_torrent("unreadable", &[("a", 40_000), ("b", 40_000)], 16384);
        // A link to itself: neither missing nor short, and unreadable even by root.
        std::fs::remove_file(src.join("a")).unwrap();
        symlink("a", src.join("a")).unwrap();
        let storage = Storage::new(metainfo, src.parent().unwrap()).unwrap();
        let error = storage.check_existing(2, &|_| {}).unwrap_err();
        assert!(error.to_string().contains("set/a"), "{error}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_loop_of_symbolic_links_is_reported_as_one_where_it_lies() {
        let PatternTorrent {
            dir,
            metainfo,
            content,
            ..
        } = pattern_torrent("loop", &[("a", 20_000), ("b", 20_000)], 16384);
        let out = dir.join("out");
        std::fs::create_dir_all(out.join("set")).unwrap();
        // A link to itself at a's path. ELOOP read "a symbolic link not followed to write (Too
        // many levels of symbolic links)", as if it were a link out of the root.
        symlink("a", out.join("set/a")).unwrap();
        let storage = Storage::new(metainfo.clone(), &out).unwrap();
        let set = storage.root().join("set");
        let error = write_piece(&storage, &content, 0).unwrap_err().to_string();
        assert!(
            error.contains("set/a: a loop of symbolic links at this path"),
            "{error}"
        );
        // The directory, found inside the root for a's write, then replaced by a link to itself:
        // b's open with O_NOFOLLOW says ELOOP as for a link at b's own path, and the loop is
        // named where it lies. (Piece 2 lies in b alone.)
        std::fs::rename(&set, dir.join("set-moved")).unwrap();
        symlink("set", &set).unwrap();
        let error = write_piece(&storage, &content, 2).unwrap_err().to_string();
        let at_set = format!("set/b: a loop of symbolic links at {}", set.display());
        assert!(error.contains(&at_set), "{error}");
        // A new start meets it when it checks the directory, to read or to write.
        let again = Storage::new(metainfo, &out).unwrap();
        let error = again.check_existing(1, &|_| {}).unwrap_err().to_string();
        assert!(error.contains("a loop of symbolic links at"), "{error}");
        let error = write_piece(&again, &content, 2).unwrap_err().to_string();
        assert!(error.contains(&at_set), "{error}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// A link at one file's path to another file of the same torrent: written through, each
    /// file's pieces went over the other's, each failed its check in turn, and the download
    /// never ended. Refused, naming both; the other file is written as usual.
    #[test]
    fn a_link_to_another_file_of_the_torrent_is_not_written_through() {
        let PatternTorrent {
            dir,
            metainfo,
            content,
            ..
        } = pattern_torrent("link-to-sibling", &[("a", 20_000), ("b", 20_000)], 16384);
        let out = dir.join("out");
        std::fs::create_dir_all(out.join("set")).unwrap();
        symlink("b", out.join("set/a")).unwrap();
        let storage = Storage::new(metainfo.clone(), &out).unwrap();
        let b = storage.root().join("set/b");
        // Piece 2 lies in b alone, piece 0 in a alone.
        write_piece(&storage, &content, 2).unwrap();
        let before = std::fs::read(&b).unwrap();
        let error = write_piece(&storage, &content, 0).unwrap_err().to_string();
        let named = format!(
            "set/a: a symbolic link to {}, another file of this torrent",
            b.display()
        );
        assert!(error.contains(&named), "{error}");
        assert_eq!(
            std::fs::read(&b).unwrap(),
            before,
            "b was written through a's link"
        );
        assert!(storage
            .verify_piece(metainfo.geometry.piece(2).unwrap())
            .unwrap());
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// Two files of a torrent at one inode, here by a hard link (names that differ only in
    /// case on a file system that ignores them are the next test's). The second file's
    /// write is refused, naming both, and the first's verified piece is kept; it was
    /// overwritten.
    #[test]
    fn two_files_at_one_inode_are_refused_not_overwritten() {
        let PatternTorrent {
            dir,
            metainfo,
            content,
            ..
        } = pattern_torrent("one-inode", &[("a", 20_000), ("b", 20_000)], 16384);
        let out = dir.join("out");
        std::fs::create_dir_all(out.join("set")).unwrap();
        std::fs::write(out.join("set/a"), b"").unwrap();
        std::fs::hard_link(out.join("set/a"), out.join("set/b")).unwrap();
        let storage = Storage::new(metainfo.clone(), &out).unwrap();
        // Piece 0 lies in a alone, piece 2 in b alone.
        write_piece(&storage, &content, 0).unwrap();
        let error = write_piece(&storage, &content, 2).unwrap_err();
        assert!(matches!(error, StorageError::SameFile { .. }), "{error}");
        let error = error.to_string();
        assert!(
            error.contains("set/b and ") && error.contains("set/a are one file"),
            "{error}"
        );
        assert!(storage
            .verify_piece(metainfo.geometry.piece(0).unwrap())
            .unwrap());
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// A file's case twin at the same inode is refused though only one of them is written:
    /// a resumed download checks both (its read opens them to write later), then writes
    /// `readme` alone, over `README`'s verified pieces. vfat and exFAT renumber an inode once
    /// it leaves memory, so the twin's path is looked at, not a claim recorded earlier.
    #[test]
    fn a_case_twin_at_one_inode_is_refused_though_only_one_is_written() {
        let PatternTorrent {
            dir,
            metainfo,
            content,
            ..
        } = pattern_torrent(
            "case-twin",
            &[("README", 20_000), ("readme", 20_000)],
            16384,
        );
        let out = dir.join("out");
        std::fs::create_dir_all(out.join("set")).unwrap();
        std::fs::write(out.join("set/README"), &content[..20_000]).unwrap();
        std::fs::hard_link(out.join("set/README"), out.join("set/readme")).unwrap();
        let storage = Storage::new(metainfo.clone(), &out).unwrap();
        storage.check_existing(1, &|_| {}).unwrap();
        let error = write_piece(&storage, &content, 2).unwrap_err();
        assert!(matches!(error, StorageError::SameFile { .. }), "{error}");
        assert!(storage
            .verify_piece(metainfo.geometry.piece(0).unwrap())
            .unwrap());
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// An inode claimed by a file that is no longer at it (moved away, or removed and its
    /// number given to a new file) is taken by the file now there: the download was failed
    /// over a file that was not the torrent's any more.
    #[test]
    fn an_inode_a_file_left_is_taken_by_the_file_now_at_it() {
        let PatternTorrent {
            dir,
            metainfo,
            content,
            ..
        } = pattern_torrent("inode-left", &[("a", 20_000), ("b", 20_000)], 16384);
        let out = dir.join("out");
        let storage = Storage::new(metainfo.clone(), &out).unwrap();
        write_piece(&storage, &content, 0).unwrap();
        std::fs::rename(out.join("set/a"), out.join("set/b")).unwrap();
        write_piece(&storage, &content, 2).unwrap();
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_dangling_link_at_a_files_path_is_not_written_through_and_the_error_says_where_it_leads() {
        let PatternTorrent {
            dir,
            metainfo,
            content,
            ..
        } = pattern_torrent("dangling", &[("a", 20_000), ("b", 20_000)], 16384);
        // a's link leads out of the root to a file not there yet, in a directory that is:
        // following it would make the file there (here, someone's authorized_keys).
        let ssh = dir.join("home/.ssh");
        std::fs::create_dir_all(&ssh).unwrap();
        let keys = ssh.join("authorized_keys");
        let out = dir.join("out");
        std::fs::create_dir_all(out.join("set")).unwrap();
        symlink(&keys, out.join("set/a")).unwrap();
        // b's leads inside, but where a missing target would be made is not checked either.
        symlink("b.part", out.join("set/b")).unwrap();
        let storage = Storage::new(metainfo.clone(), &out).unwrap();
        // To read, each is a missing file: no piece, no error.
        assert_eq!(storage.check_existing(1, &|_| {}).unwrap().count(), 0);
        // To write, each is an error naming the file and where its link leads (it said "a
        // symbolic link not followed to write (No such file or directory)").
        let error = write_piece(&storage, &content, 0).unwrap_err().to_string();
        let to_keys = format!(
            "set/a: a symbolic link to {}, which does not exist: not followed to write",
            keys.display()
        );
        assert!(error.contains(&to_keys), "{error}");
        assert!(!keys.exists(), "a file was made through a dangling link");
        let error = write_piece(&storage, &content, 2).unwrap_err().to_string();
        assert!(
            error.contains("set/b: a symbolic link to b.part, which does not exist"),
            "{error}"
        );
        assert!(!out.join("set/b.part").exists());
        // The link removed, the file is downloaded in its place.
        std::fs::remove_file(out.join("set/a")).unwrap();
        write_piece(&storage, &content, 0).unwrap();
        assert!(storage
            .verify_piece(metainfo.geometry.piece(0).unwrap())
            .unwrap());
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// Mounts a tmpfs on `dir`; `None` where that is not allowed (not root).
    fn mount_tmpfs(dir: &Path) -> Option<()> {
        std::fs::create_dir_all(dir).unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=4m", "tmpfs"])
            .arg(dir)
            .stderr(std::process::Stdio::null())
            .status();
        status.is_ok_and(|s| s.success()).then_some(())
    }

    fn remount(dir: &Path, options: &str) {
        let status = std::process::Command::new("mount")
            .args(["-o", options])
            .arg(dir)
            .status()
            .unwrap();
        assert!(status.success(), "mount -o {options} {}", dir.display());
    }

    #[test]
    fn read_only_data_is_checked_and_read_and_a_write_to_it_says_why() {
        let PatternTorrent {
            dir,
            src,
            metainfo,
            content,
        } = pattern_torrent("read-only", &[("a", 40_000), ("b", 40_000)], 16384);
        let data = dir.join("data");
        if mount_tmpfs(&data).is_none() {
            println!("SKIPPED: cannot mount a tmpfs here (needs root)");
            std::fs::remove_dir_all(dir).unwrap();
            return;
        }
        std::fs::create_dir_all(data.join("set")).unwrap();
        for name in ["a", "b"] {
            std::fs::copy(src.join(name), data.join("set").join(name)).unwrap();
        }
        remount(&data, "remount,ro");
        let result = std::panic::catch_unwind(|| {
            let storage = Storage::new(metainfo.clone(), &data).unwrap();
            let have = storage.check_existing(2, &|_| {}).unwrap();
            assert_eq!(have.count(), metainfo.geometry.piece_count());
            let mut block = vec![MaybeUninit::<u8>::uninit(); 16384];
            let piece = metainfo.geometry.piece(2).unwrap();
            storage.read_block(piece, 0, &mut block).unwrap();
            let error = write_piece(&storage, &content, 0).unwrap_err();
            assert!(
                error.to_string().contains("set/a") && error.to_string().contains("Read-only"),
                "{error}"
            );
        });
        let _ = std::process::Command::new("umount").arg(&data).status();
        std::fs::remove_dir_all(&dir).unwrap();
        if let Err(panic) = result {
            std::panic::resume_unwind(panic);
        }
    }
}
