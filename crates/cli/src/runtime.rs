//! The tokio runtime the engine's commands run on.

/// A multi-threaded runtime with half the cores this process may use as workers (at least
/// one), unless `TOKIO_WORKER_THREADS` says otherwise. A peer's data path is one task, and
/// a worker left idle beside it is woken to look for work on nearly every socket wake-up: on
/// this project's 2-core bench machine, `pow download` of 1 GiB took 2,600-17,000 context
/// switches with two workers and 370-7,600 with one, 4-7% more CPU per GiB, and lost 7-21%
/// of its speed from aria2's, pow's and rqbit's seeds (and from two pow seeds at once). The
/// rest of the cores are left to the kernel's network and page-cache work and to the
/// blocking pool (read-back piece checks, the check of data already on disk, a seed's reads
/// of blocks not in the page cache), which this does not limit.
pub fn engine_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if std::env::var_os("TOKIO_WORKER_THREADS").is_none() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        builder.worker_threads((cores / 2).max(1));
    }
    builder.enable_all().build()
}
