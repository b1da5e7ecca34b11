//! The tokio runtimes the engine's commands run on.

/// What a command's engine spends its time on, which decides its runtime's workers.
#[derive(Clone, Copy)]
pub enum Work {
    /// `download`, `source load`: a few hot peer tasks carry the data.
    Download,
    /// `seed`, `serve`, `publish`, `source seed`: many light peer tasks, one per leecher.
    Seed,
}

/// A multi-threaded runtime, unless `TOKIO_WORKER_THREADS` says otherwise with:
/// - for a download, half the cores this process may use as workers (at least one). Its
///   data path is one task per peer, and a worker left idle beside a hot one is woken to look
///   for work on nearly every socket wake-up: on this project's 2-core bench machine, `pow
///   download` of 1 GiB took 2,600-17,000 context switches with two workers and 370-7,600
///   with one, 4-7% more CPU per GiB, and lost 7-21% of its speed from aria2's, pow's and
///   rqbit's seeds (and from two pow seeds at once). The rest of the cores are left to the
///   kernel's network and page-cache work and to the blocking pool (read-back piece checks,
///   the check of data already on disk, a seed's reads of blocks not in the page cache),
///   which this does not limit.
/// - for a seed, a worker per core: it serves many peers at once, and with one worker a
///   plain seed with 8 pow leechers (`benches/swarm8.sh`) uploaded 1.03-1.52x the payload
///   where it uploaded 1.01-1.21x with two (leechers on one worker each, 6 runs each).
pub fn engine_runtime(work: Work) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    // tokio reads it itself, and panics on one that is no number of threads.
    if let Some(set) = std::env::var_os("TOKIO_WORKER_THREADS") {
        let threads = set.to_str().and_then(|s| s.trim().parse::<usize>().ok());
        if threads.is_none_or(|n| n == 0) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "TOKIO_WORKER_THREADS={}: expected a number of threads",
                    set.to_string_lossy()
                ),
            ));
        }
    }
    if let (Work::Download, None) = (work, std::env::var_os("TOKIO_WORKER_THREADS")) {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        builder.worker_threads((cores / 2).max(1));
    }
    builder.enable_all().build()
}
