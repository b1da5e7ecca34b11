//! The tokio runtime the engine's commands run on.

/// A multi-threaded runtime with half the cores this process may use as workers (at least
/// one), unless `TOKIO_WORKER_THREADS` says otherwise. A peer's data path is one task, and
/// a worker left idle beside it is woken to look for work on nearly every socket wake-up: on
/// this project's 2-core bench machine, a second worker cost `pow download` 3,000-17,000
/// context switches per GiB where one worker took 400-4,000, 4-7% more CPU per GiB, and
/// 7-12% of its speed from aria2's, rqbit's and pow's seeds (from two pow seeds at once
/// too). The rest of the cores are left to what the data path hands off: the kernel's
/// network and page-cache work, and the blocking pool (disk reads and piece checks), which
/// is not limited by this.
pub fn engine_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if std::env::var_os("TOKIO_WORKER_THREADS").is_none() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        builder.worker_threads((cores / 2).max(1));
    }
    builder.enable_all().build()
}
