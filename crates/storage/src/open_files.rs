//! The process's budget of open content files, shared by every [`crate::Storage`]: at most
//! [`OpenFiles::capacity`] handles stay open, and opening one more closes the least recently
//! used (a clock: one "used" bit a file, set on each access, cleared as the hand passes).
//!
//! Why: a dataset of tens of thousands of files (microscopy slices, one image each) is past
//! any open-file limit if every file stays open, and `open` then fails with "Too many open
//! files" in the middle of a download. libtorrent (a file pool of 40) and Transmission (32)
//! bound their handles the same way; pow keeps more, as a rule a quarter of the soft limit,
//! so a torrent of fewer files than that never closes one.

use std::collections::VecDeque;
use std::fs::File;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, TryLockError};

/// One content file's handle, while it is open.
#[derive(Default)]
pub(crate) struct Slot {
    pub(crate) handle: Mutex<Option<Arc<File>>>,
    /// Touched since the clock hand last passed it.
    used: AtomicBool,
}

impl Slot {
    pub(crate) fn touch(&self) {
        // A load first: a file written by several threads at once is not a contended store.
        if !self.used.load(Ordering::Relaxed) {
            self.used.store(true, Ordering::Relaxed);
        }
    }

    /// Closes the handle; one in use elsewhere closes when that use ends. The clock then
    /// drops the slot at its first pass.
    pub(crate) fn close(&self) {
        self.handle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        self.used.store(false, Ordering::Relaxed);
    }
}

pub struct OpenFiles {
    capacity: usize,
    /// Slots whose handle is (or, once closed by their storage, was) open, oldest first.
    ring: Mutex<VecDeque<Arc<Slot>>>,
}

impl OpenFiles {
    /// At most `capacity` (at least 1) files open at once.
    pub fn with_capacity(capacity: usize) -> Arc<OpenFiles> {
        Arc::new(OpenFiles {
            capacity: capacity.max(1),
            ring: Mutex::new(VecDeque::new()),
        })
    }

    /// The process's pool: a quarter of the soft limit of open files when first used (pow
    /// lifts that to the hard limit at start), between 16 and 1,024. The rest is left for
    /// sockets, the graph store and the runtime.
    pub fn global() -> Arc<OpenFiles> {
        static GLOBAL: OnceLock<Arc<OpenFiles>> = OnceLock::new();
        GLOBAL
            .get_or_init(|| OpenFiles::with_capacity((soft_limit() / 4).clamp(16, 1024)))
            .clone()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Handles open now (counting any a storage closed that the clock has not yet passed).
    pub fn open(&self) -> usize {
        self.ring.lock().expect("open files lock").len()
    }

    /// Counts `slot`, just opened, closing others to stay within the capacity.
    pub(crate) fn admit(&self, slot: &Arc<Slot>) {
        slot.touch();
        let mut ring = self.ring.lock().expect("open files lock");
        ring.push_back(slot.clone());
        self.close_down_to(&mut ring, self.capacity);
    }

    /// After the system refused to open a file (the process's limit is taken, partly by
    /// sockets): closes half of the handles open so a retry can succeed.
    pub(crate) fn relieve(&self) {
        let mut ring = self.ring.lock().expect("open files lock");
        let keep = ring.len() / 2;
        self.close_down_to(&mut ring, keep);
    }

    fn close_down_to(&self, ring: &mut VecDeque<Arc<Slot>>, keep: usize) {
        // Each slot is passed at most twice (once to clear its bit, once to close it); one
        // busy in another thread's open is skipped, so the ring may stay over for a moment.
        let mut passes = ring.len() * 2;
        while ring.len() > keep && passes > 0 {
            passes -= 1;
            let slot = ring.pop_front().expect("longer than keep");
            if slot.used.swap(false, Ordering::Relaxed) {
                ring.push_back(slot);
                continue;
            }
            // Never wait on a slot here: its holder may be waiting on this ring.
            let closed = match slot.handle.try_lock() {
                Ok(mut handle) => {
                    handle.take();
                    true
                }
                // A thread panicked holding it: the handle is still a handle to close.
                Err(TryLockError::Poisoned(poisoned)) => {
                    poisoned.into_inner().take();
                    true
                }
                Err(TryLockError::WouldBlock) => false,
            };
            if !closed {
                ring.push_back(slot);
            }
        }
    }
}

fn soft_limit() -> usize {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit with a valid pointer to a local rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return 1024;
    }
    usize::try_from(limit.rlim_cur).unwrap_or(usize::MAX)
}

/// True when `open` failed because the process or the system has no descriptor left.
pub(crate) fn is_out_of_descriptors(error: &std::io::Error) -> bool {
    matches!(error.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}
