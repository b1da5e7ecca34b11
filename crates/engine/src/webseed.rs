//! BEP 19 web seeds (`url-list`): an HTTP server holding the torrent's files, used alongside
//! peers.
//!
//! Each web seed is one task registered as a pseudo-peer: it has a [`PeerKey`], a
//! [`PeerEntry`] whose bitfield says it has every piece, and an address in the discard-only
//! prefix `100::/64` (RFC 6666) that no real peer has. So the picker hands it blocks as it would
//! a peer (whole pieces first, rarest first, end-game duplicates), the strikes of
//! [`crate::peer::verify_piece`] and its ban after [`crate::MAX_STRIKES`] apply unchanged, and
//! `have`/`cancel`/close reach it through the same channel.
//!
//! Blocks picked together are grouped into contiguous runs inside a piece; a run is fetched
//! with one `Range:` request per file it touches (BEP 47 pad files are zeros, not fetched),
//! then stored block by block through the picker (a block a peer delivered first is dropped)
//! and the pieces it completes are verified like peer data (a run that was a whole piece and
//! wrote all of it is hashed from the bytes in memory, not read back). At most [`MAX_RUNS_IN_FLIGHT`]
//! runs of at most [`MAX_RUN_BYTES`] are in flight per web seed. A run whose blocks were all
//! delivered by peers first (end-game `cancel`s) is aborted.
//!
//! Errors: a connection failure, a timeout (a request slower than [`MIN_RUN_RATE`] in all
//! among them), a body cut short or an HTTP error status backs off (1 s doubling to 60 s, or
//! as long as a 503's or 429's `Retry-After` says, up to 10 minutes) and frees the run's blocks
//! for others; 404, 410 or 416 on a file gives up that file's pieces for this web seed, as do
//! 401 and 403 once a run came from it (before, they end it: it refuses us everything, most
//! likely); a file whose path cannot be put in a URL (a `..` component) is never asked of it;
//! a server that ignores `Range:` (or a URL reqwest cannot fetch, such as https without TLS)
//! ends the web seed. A server that breaks the protocol (another range than asked, a body
//! longer than asked or of another `Content-Length`, a body encoded unasked, a redirect loop)
//! backs off the same way and gets a strike; after [`MAX_PROTOCOL_STRIKES`] rounds of them
//! with no run stored between, the web seed ends. A piece this web seed alone sent that fails
//! its hash is not asked of it again (its copy is different), besides the strike of a bad
//! piece.

use crate::{Inner, PeerCmd, PeerEntry};
use pow_metainfo::{Block, Metainfo, BLOCK_SIZE};
use pow_picker::{PeerKey, Received};
use pow_wire::Bitfield;
use sha1::{Digest, Sha1};
use std::collections::{HashMap, HashSet};
use std::net::{Ipv6Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio::task::{AbortHandle, JoinSet};

/// Runs (each within one piece) fetched at once from one web seed.
pub const MAX_RUNS_IN_FLIGHT: usize = 4;
/// Bytes per run at most: a piece larger than this is fetched in several runs.
pub const MAX_RUN_BYTES: u32 = 4 * 1024 * 1024;
const BACKOFF_START: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(60);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// No bytes from the server for this long: the request failed.
const READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Bytes per second a request must average, past [`READ_TIMEOUT`]: the read timeout restarts
/// with every byte, and a server trickling one every 25 s held a run's blocks for as long as
/// it pleased.
pub const MIN_RUN_RATE: u64 = 4 * 1024;
/// Rounds of protocol errors, with no run stored between, that end a web seed.
pub const MAX_PROTOCOL_STRIKES: u32 = 3;
/// The longest `Retry-After` heeded.
const RETRY_AFTER_MAX: Duration = Duration::from_secs(600);
/// How often an idle web seed looks for work (the picker has no notifications).
const IDLE_POLL: Duration = Duration::from_millis(200);

/// The pseudo-address of web seed `key`: in `100::/64`, port 0, never a real peer's.
pub(crate) fn pseudo_addr(key: PeerKey) -> SocketAddr {
    let k = key.to_be_bytes();
    let word = |i: usize| u16::from_be_bytes([k[i], k[i + 1]]);
    SocketAddr::new(
        Ipv6Addr::new(0x100, 0, 0, 0, word(0), word(2), word(4), word(6)).into(),
        0,
    )
}

/// Registers a web seed (an http(s) URL: [`crate::Torrent::add_web_seeds`] keeps to those) as
/// a pseudo-peer and starts its task.
pub(crate) fn start(inner: &Arc<Inner>, url: String) {
    let pieces = inner.metainfo.geometry.piece_count();
    let (tx, rx) = mpsc::unbounded_channel();
    let (key, addr) = {
        let mut state = inner.lock();
        if state.web_seeds.values().any(|u| *u == url) {
            return;
        }
        let addr = pseudo_addr(state.next_peer_key());
        let bits = Bitfield::full(pieces);
        state.picker.peer_connected(&bits);
        let key = state.add_peer(PeerEntry::new(addr, None, bits, tx));
        state.web_seeds.insert(addr, url.clone());
        (key, addr)
    };
    let client = reqwest::Client::builder()
        .tls_backend_preconfigured((*pow_tls::client_config()).clone())
        .connect_timeout(CONNECT_TIMEOUT)
        .read_timeout(READ_TIMEOUT)
        .user_agent(concat!("pow/", env!("CARGO_PKG_VERSION")))
        .build();
    let client = match client {
        Ok(client) => client,
        Err(e) => {
            tracing::warn!("web seed {url}: {e}");
            deregister(inner, key);
            return;
        }
    };
    let files = Arc::new(file_urls(&url, &inner.metainfo));
    tracing::info!("web seed {url}: started");
    let mut seed = WebSeed {
        inner: inner.clone(),
        key,
        addr,
        url,
        client,
        files,
        jobs: JoinSet::new(),
        runs: HashMap::new(),
        next_run: 0,
        backoff: BACKOFF_START,
        retry_at: None,
        protocol_strikes: 0,
        stored_any: false,
    };
    let geometry = &inner.metainfo.geometry;
    let unnameable: Vec<u32> = (inner.metainfo.files.iter().enumerate())
        .filter(|(i, f)| !f.attr.pad && seed.files[*i].is_none())
        .flat_map(|(i, _)| geometry.file_pieces(i))
        .collect();
    if !unnameable.is_empty() {
        tracing::warn!(
            "web seed {}: files with a . or .. path component cannot be named in a URL; not asking it for them",
            seed.url
        );
        if !seed.drop_pieces(unnameable) {
            deregister(inner, key);
            return;
        }
    }
    tokio::spawn(seed.run(rx));
}

fn deregister(inner: &Inner, key: PeerKey) {
    let mut state = inner.lock();
    if let Some(entry) = state.peers.remove(&key) {
        state.picker.peer_disconnected(key, &entry.bits);
    }
}

/// Where each file of the torrent is on the web seed (`None` for pad files), by BEP 19: a
/// single-file torrent's URL is the file itself unless it ends with `/` (then the name is
/// appended); a multi-file torrent's files are at URL/name/path..., every component
/// percent-encoded. `None` for pad files and for files a URL cannot name: a component `.` or
/// `..` is a dot segment however it is encoded (`%2E%2E` too, by the URL standard), and the
/// URL would name another file of the server.
pub fn file_urls(base: &str, metainfo: &Metainfo) -> Vec<Option<String>> {
    let nameable = |component: &[u8]| !matches!(component, b"." | b"..");
    if !metainfo.multi_file {
        let url = if base.ends_with('/') {
            nameable(&metainfo.raw_name)
                .then(|| format!("{base}{}", percent_encode(&metainfo.raw_name)))
        } else {
            Some(base.to_string())
        };
        return vec![url];
    }
    let mut root = base.to_string();
    if !root.ends_with('/') {
        root.push('/');
    }
    root.push_str(&percent_encode(&metainfo.raw_name));
    metainfo
        .files
        .iter()
        .map(|f| {
            let nameable = nameable(&metainfo.raw_name) && f.raw_components().all(nameable);
            (!f.attr.pad && nameable).then(|| {
                let mut url = root.clone();
                for component in f.raw_components() {
                    url.push('/');
                    url.push_str(&percent_encode(component));
                }
                url
            })
        })
        .collect()
}

/// Percent-encodes every byte but RFC 3986's unreserved characters.
pub fn percent_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &b in bytes {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Contiguous blocks of one piece, fetched together.
#[derive(Debug, Clone)]
struct Run {
    piece: u32,
    begin: u32,
    length: u32,
    blocks: Vec<Block>,
}

/// Groups picked blocks into runs of contiguous blocks within a piece.
fn runs_of(mut blocks: Vec<Block>) -> Vec<Run> {
    blocks.sort_by_key(|b| (b.piece.get(), b.begin));
    let mut runs: Vec<Run> = Vec::new();
    for block in blocks {
        match runs.last_mut() {
            Some(run)
                if run.piece == block.piece.get()
                    && run.begin + run.length == block.begin
                    && run.length + block.length <= MAX_RUN_BYTES =>
            {
                run.length += block.length;
                run.blocks.push(block);
            }
            _ => runs.push(Run {
                piece: block.piece.get(),
                begin: block.begin,
                length: block.length,
                blocks: vec![block],
            }),
        }
    }
    runs
}

#[derive(Debug)]
enum FetchError {
    /// Try again later (connection, timeout, server error).
    Retry(String),
    /// Try again once the server's `Retry-After` passed (503, 429).
    RetryAfter(String, Duration),
    /// The server broke the protocol: try again later, with a strike.
    Protocol(String),
    /// This file is not on the web seed (404, 410, 416), or cannot be named in a URL.
    FileGone(usize, String),
    /// The server refuses us this file (401, 403): as [`FetchError::FileGone`] once a run
    /// came from it, else the web seed ends (it refuses every file, most likely).
    Refused(usize, String),
    /// The web seed cannot be used at all.
    Fatal(String),
}

/// How a run ended.
enum Outcome {
    /// Stored; these pieces it completed failed their hash, and this web seed alone sent them.
    Stored {
        bad: Vec<u32>,
    },
    Failed(FetchError),
}

struct RunState {
    run: Run,
    /// Blocks delivered by others first (end-game).
    cancelled: HashSet<u32>,
    abort: AbortHandle,
}

struct WebSeed {
    inner: Arc<Inner>,
    key: PeerKey,
    addr: SocketAddr,
    url: String,
    client: reqwest::Client,
    files: Arc<Vec<Option<String>>>,
    jobs: JoinSet<(u64, Outcome)>,
    runs: HashMap<u64, RunState>,
    next_run: u64,
    backoff: Duration,
    retry_at: Option<Instant>,
    /// Rounds of protocol errors since the last run stored.
    protocol_strikes: u32,
    /// A run came from it.
    stored_any: bool,
}

impl WebSeed {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<PeerCmd>) {
        let mut shutdown = self.inner.shutdown.subscribe();
        loop {
            if self.inner.lock().picker.is_complete() {
                break;
            }
            if self.retry_at.is_none_or(|t| Instant::now() >= t) {
                self.retry_at = None;
                self.fill();
            }
            tokio::select! {
                Some(joined) = self.jobs.join_next(), if !self.jobs.is_empty() => {
                    // An aborted run was already forgotten.
                    if let Ok((id, outcome)) = joined {
                        if !self.finished(id, outcome) {
                            break;
                        }
                    }
                }
                cmd = rx.recv() => match cmd {
                    Some(PeerCmd::Cancel(block)) => self.cancel(block),
                    Some(PeerCmd::Close) | None => break,
                    Some(_) => {}
                },
                _ = tokio::time::sleep(IDLE_POLL) => {}
                _ = crate::until_true(&mut shutdown) => break,
            }
        }
        self.jobs.abort_all();
        deregister(&self.inner, self.key);
        tracing::info!("web seed {}: stopped", self.url);
    }

    /// Starts runs while under the cap and the picker has blocks for us.
    fn fill(&mut self) {
        let geometry = &self.inner.metainfo.geometry;
        let per_pick = (geometry.piece_length().min(MAX_RUN_BYTES)).div_ceil(BLOCK_SIZE) as usize;
        while self.runs.len() < MAX_RUNS_IN_FLIGHT {
            let blocks = {
                let mut state = self.inner.lock();
                let crate::State { picker, peers, .. } = &mut *state;
                let Some(entry) = peers.get(&self.key) else {
                    return;
                };
                // One piece per pick: the picker fills `per_pick` from several pieces (after a
                // short last piece, say), which would split every later piece in two requests.
                // Blocks of other pieces go back; pieces we opened come first next time.
                let mut blocks = picker.pick(self.key, &entry.bits, per_pick);
                let first = blocks.first().map(|b| b.piece);
                blocks.retain(|b| {
                    let keep = Some(b.piece) == first;
                    if !keep {
                        picker.request_failed(self.key, b);
                    }
                    keep
                });
                blocks
            };
            if blocks.is_empty() {
                return;
            }
            for run in runs_of(blocks) {
                self.spawn(run);
            }
        }
    }

    fn spawn(&mut self, run: Run) {
        let id = self.next_run;
        self.next_run += 1;
        let job = Job {
            inner: self.inner.clone(),
            key: self.key,
            addr: self.addr,
            client: self.client.clone(),
            files: self.files.clone(),
            run: run.clone(),
        };
        let abort = self.jobs.spawn(async move { (id, job.run().await) });
        self.runs.insert(
            id,
            RunState {
                run,
                cancelled: HashSet::new(),
                abort,
            },
        );
    }

    /// A peer delivered this block first: once every block of its run is, the run is aborted.
    fn cancel(&mut self, block: Block) {
        let found = self.runs.iter_mut().find(|(_, r)| {
            r.run.piece == block.piece.get() && r.run.blocks.iter().any(|b| b.begin == block.begin)
        });
        if let Some((&id, state)) = found {
            state.cancelled.insert(block.begin);
            if state.cancelled.len() == state.run.blocks.len() {
                state.abort.abort();
                self.runs.remove(&id);
            }
        }
    }

    /// Handles a finished run; false when the web seed is to stop.
    fn finished(&mut self, id: u64, outcome: Outcome) -> bool {
        let Some(state) = self.runs.remove(&id) else {
            return true;
        };
        match outcome {
            Outcome::Stored { bad } => {
                self.backoff = BACKOFF_START;
                self.protocol_strikes = 0;
                self.stored_any = true;
                if !bad.is_empty() {
                    tracing::warn!(
                        "web seed {}: piece(s) {bad:?} failed their hash; not asking it for them again",
                        self.url
                    );
                    self.drop_pieces(bad)
                } else {
                    true
                }
            }
            Outcome::Failed(error) => {
                // Its blocks go back to the picker (those a peer already delivered are no
                // longer ours to free).
                {
                    let mut state_ = self.inner.lock();
                    for block in &state.run.blocks {
                        if !state.cancelled.contains(&block.begin) {
                            state_.picker.request_failed(self.key, block);
                        }
                    }
                }
                match error {
                    FetchError::Retry(why) => {
                        tracing::warn!("web seed {}: {why}; backing off", self.url);
                        self.back_off();
                        true
                    }
                    FetchError::RetryAfter(why, after) => {
                        tracing::warn!(
                            "web seed {}: {why}; trying again in {} s, as it asked",
                            self.url,
                            after.as_secs()
                        );
                        self.retry_after(after);
                        true
                    }
                    FetchError::Protocol(why) => {
                        // Runs failing together count once, as they back off once.
                        let new_round = self.retry_at.is_none();
                        self.back_off();
                        if new_round {
                            self.protocol_strikes += 1;
                        }
                        if self.protocol_strikes >= MAX_PROTOCOL_STRIKES {
                            tracing::warn!(
                                "web seed {}: {why}; {MAX_PROTOCOL_STRIKES} rounds of protocol errors, not using it",
                                self.url
                            );
                            return false;
                        }
                        tracing::warn!("web seed {}: {why}; backing off", self.url);
                        true
                    }
                    FetchError::Refused(_, why) if !self.stored_any => {
                        tracing::warn!(
                            "web seed {}: {why} before any run came from it; not using it",
                            self.url
                        );
                        false
                    }
                    FetchError::FileGone(file, why) | FetchError::Refused(file, why) => {
                        tracing::warn!(
                            "web seed {}: {why}; not asking it for that file again",
                            self.url
                        );
                        let pieces = self.inner.metainfo.geometry.file_pieces(file).collect();
                        self.drop_pieces(pieces)
                    }
                    FetchError::Fatal(why) => {
                        tracing::warn!("web seed {}: {why}; not using it", self.url);
                        false
                    }
                }
            }
        }
    }

    /// No runs start before the back-off has passed, which then doubles; runs failing
    /// together (the server is down) back off once.
    fn back_off(&mut self) {
        if self.retry_at.is_none() {
            self.retry_at = Some(Instant::now() + self.backoff);
            self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// No runs start before `after` has passed, as the server's `Retry-After` asked (nor
    /// before a back-off already running has); the back-off's next step stays as it was.
    fn retry_after(&mut self, after: Duration) {
        let until = Instant::now() + after;
        if self.retry_at.is_none_or(|at| at < until) {
            self.retry_at = Some(until);
        }
    }

    /// This web seed no longer offers these pieces; false when it offers none.
    fn drop_pieces(&mut self, pieces: Vec<u32>) -> bool {
        let mut state = self.inner.lock();
        let crate::State { picker, peers, .. } = &mut *state;
        let Some(entry) = peers.get_mut(&self.key) else {
            return false;
        };
        for piece in pieces {
            if entry.bits.get(piece) {
                entry.bits.clear(piece);
                picker.peer_lost(piece);
            }
        }
        let left = entry.bits.ones().any(|p| picker.is_wanted(p));
        if !left {
            tracing::warn!("web seed {}: has nothing left we want", self.url);
        }
        left
    }
}

/// One run: fetch, store, verify what it completed.
struct Job {
    inner: Arc<Inner>,
    key: PeerKey,
    addr: SocketAddr,
    client: reqwest::Client,
    files: Arc<Vec<Option<String>>>,
    run: Run,
}

impl Job {
    async fn run(self) -> Outcome {
        let data = match self.fetch().await {
            Ok(data) => data,
            Err(e) => return Outcome::Failed(e),
        };
        // Storing and verifying run as their own task: once blocks are marked received, their
        // pieces must reach a verdict even if this run is aborted (web seed banned or stopped),
        // or the picker would wait for those hashes for ever.
        let (inner, key, addr, run) = (self.inner, self.key, self.addr, self.run);
        let settled = tokio::spawn(async move {
            let stored = {
                let inner = inner.clone();
                tokio::task::spawn_blocking(move || {
                    let stored = store(&inner, key, addr, &run, &data)?;
                    Ok::<_, String>((stored.hash_in_memory(&inner, &run, &data), stored.done))
                })
                .await
                .unwrap_or_else(|e| Err(e.to_string()))
            };
            let (in_memory, done) = match stored {
                Ok(stored) => stored,
                Err(e) => {
                    // A disk error is not the server's fault; the run's piece was failed, and
                    // the download ends with the error (as with peers' data).
                    tracing::error!("write failed: {e}");
                    return Vec::new();
                }
            };
            let mut bad = Vec::new();
            for piece in done {
                let only_us =
                    inner.lock().senders.get(&piece).is_some_and(|s| {
                        !s.mixed && s.blocks.first().is_some_and(|b| b.key == key)
                    });
                match in_memory {
                    Some((hashed, good)) if hashed == piece => {
                        if good {
                            inner
                                .stats
                                .hashed_as_received
                                .fetch_add(1, Ordering::Relaxed);
                        }
                        crate::peer::record_verdict(&inner, piece, good, None);
                    }
                    _ => {
                        if !crate::peer::verify_piece(inner.clone(), piece).await {
                            // Our disk's failure, not the web seed's: not counted as bad.
                            continue;
                        }
                    }
                }
                if only_us && !inner.lock().picker.have().get(piece) {
                    bad.push(piece);
                }
            }
            bad
        });
        Outcome::Stored {
            bad: settled.await.unwrap_or_default(),
        }
    }

    /// The run's bytes: one range request per file it touches.
    async fn fetch(&self) -> Result<Vec<u8>, FetchError> {
        let metainfo = &self.inner.metainfo;
        let geometry = &metainfo.geometry;
        let piece = geometry.piece(self.run.piece).expect("picked piece");
        let offset = geometry.piece_offset(piece) + u64::from(self.run.begin);
        let mut data = Vec::with_capacity(self.run.length as usize);
        for span in geometry.spans(offset, u64::from(self.run.length)) {
            match &self.files[span.file] {
                None if metainfo.files[span.file].attr.pad => {
                    data.resize(data.len() + span.length as usize, 0)
                }
                None => {
                    return Err(FetchError::FileGone(
                        span.file,
                        format!(
                            "file {:?} cannot be named in a URL (a . or .. component)",
                            metainfo.files[span.file].raw_path_lossy()
                        ),
                    ))
                }
                Some(url) => {
                    let file_length = metainfo.files[span.file].length;
                    self.get_range(
                        url,
                        span.file,
                        file_length,
                        span.offset,
                        span.length,
                        &mut data,
                    )
                    .await?
                }
            }
        }
        Ok(data)
    }

    async fn get_range(
        &self,
        url: &str,
        file: usize,
        file_length: u64,
        offset: u64,
        length: u64,
        out: &mut Vec<u8>,
    ) -> Result<(), FetchError> {
        let last = offset + length - 1;
        let mut deadline = tokio::time::Instant::now() + request_deadline(length);
        // Not a strike: the link may be what is slow, ours included.
        let too_slow = || {
            FetchError::Retry(format!(
                "GET {url}: {length} bytes not sent at {MIN_RUN_RATE} B/s"
            ))
        };
        let request = self
            .client
            .get(url)
            .header(reqwest::header::RANGE, format!("bytes={offset}-{last}"))
            .send();
        let response = tokio::time::timeout_at(deadline, request)
            .await
            .map_err(|_| too_slow())?
            .map_err(|e| {
                let why = format!("GET {url}: {}", describe(&e));
                if e.is_builder() {
                    FetchError::Fatal(why)
                } else if e.is_redirect() {
                    FetchError::Protocol(why)
                } else {
                    FetchError::Retry(why)
                }
            })?;
        let status = response.status().as_u16();
        let encoded = response
            .headers()
            .get(reqwest::header::CONTENT_ENCODING)
            .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"));
        if encoded && matches!(status, 200 | 206) {
            return Err(FetchError::Protocol(format!(
                "GET {url}: the body is encoded ({:?}), which was not asked",
                response.headers()[reqwest::header::CONTENT_ENCODING]
            )));
        }
        match status {
            206 => {
                let range = response
                    .headers()
                    .get(reqwest::header::CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(content_range);
                if let Some((_, _, Some(total))) = range.filter(|r| r.2 != Some(file_length)) {
                    // Another version of the file, or one not wholly there: each retry fetched
                    // its cut-short tail again, for as long as the download ran.
                    return Err(FetchError::FileGone(
                        file,
                        format!("GET {url}: the server's file is {total} bytes, the torrent's {file_length}"),
                    ));
                }
                if range.is_some_and(|(start, _, _)| start != offset) {
                    return Err(FetchError::Protocol(format!(
                        "GET {url}: the server sent another range than asked"
                    )));
                }
                if let Some(sent) = response.content_length().filter(|&n| n != length) {
                    return Err(FetchError::Protocol(format!(
                        "GET {url}: a body of {sent} bytes for the {length} asked"
                    )));
                }
            }
            200 if offset == 0 && length == file_length => {
                if let Some(total) = response.content_length().filter(|&n| n != file_length) {
                    return Err(FetchError::FileGone(
                        file,
                        format!("GET {url}: the server's file is {total} bytes, the torrent's {file_length}"),
                    ));
                }
            }
            200 => {
                return Err(FetchError::Fatal(format!(
                    "GET {url}: the server ignores Range requests"
                )))
            }
            401 | 403 => {
                return Err(FetchError::Refused(
                    file,
                    format!("GET {url}: HTTP {status}"),
                ))
            }
            404 | 410 | 416 => {
                return Err(FetchError::FileGone(
                    file,
                    format!("GET {url}: HTTP {status}"),
                ))
            }
            429 | 503 => {
                let why = format!("GET {url}: HTTP {status}");
                return Err(match retry_after(response.headers()) {
                    Some(after) => FetchError::RetryAfter(why, after),
                    None => FetchError::Retry(why),
                });
            }
            _ => return Err(FetchError::Retry(format!("GET {url}: HTTP {status}"))),
        }
        let start = out.len();
        let mut response = response;
        loop {
            let chunk = tokio::time::timeout_at(deadline, response.chunk())
                .await
                .map_err(|_| too_slow())?
                .map_err(|e| FetchError::Retry(format!("GET {url}: {}", describe(&e))))?;
            let Some(chunk) = chunk else { break };
            if (out.len() - start + chunk.len()) as u64 > length {
                return Err(FetchError::Protocol(format!(
                    "GET {url}: the server sent more than the {length} bytes asked"
                )));
            }
            out.extend_from_slice(&chunk);
            if let Some(limit) = &self.inner.config.download_limit {
                if let Some(wait) = limit.take_owing(chunk.len()) {
                    // our own limit's wait is not the server's slowness
                    deadline += wait;
                    tokio::time::sleep(wait).await;
                }
            }
        }
        let got = (out.len() - start) as u64;
        if got != length {
            // A body without a length, cut short: the connection may have been.
            return Err(FetchError::Retry(format!(
                "GET {url}: {got} of {length} bytes"
            )));
        }
        Ok(())
    }
}

/// How long a request for `length` bytes may take in all: [`READ_TIMEOUT`] for the server to
/// start, then [`MIN_RUN_RATE`].
fn request_deadline(length: u64) -> Duration {
    READ_TIMEOUT + Duration::from_secs(length.div_ceil(MIN_RUN_RATE))
}

/// A `Retry-After` of delay-seconds, at most [`RETRY_AFTER_MAX`] (an HTTP-date is not taken:
/// the usual back-off applies).
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let seconds: u64 = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(seconds).min(RETRY_AFTER_MAX))
}

/// `bytes START-END/TOTAL` → (START, END, TOTAL unless `*`).
fn content_range(value: &str) -> Option<(u64, u64, Option<u64>)> {
    let rest = value.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (start, end) = range.split_once('-')?;
    let total = match total.trim() {
        "*" => None,
        total => Some(total.parse().ok()?),
    };
    Some((start.trim().parse().ok()?, end.trim().parse().ok()?, total))
}

/// reqwest's top-level message is "error sending request"; the cause says what happened.
fn describe(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text = format!("{text}: {s}");
        source = s.source();
    }
    text.push_str(pow_tls::hint(&text));
    text
}

/// What [`store`] did with a run.
struct Stored {
    /// Pieces the run completed (to verify).
    done: Vec<u32>,
    /// Every block of the run was written (none had come from elsewhere first).
    all_written: bool,
}

impl Stored {
    /// When the run was a whole piece and wrote every block of it, the bytes on disk are
    /// `data`: the piece's SHA-1 is taken from memory instead of reading it back. Returns the
    /// piece and whether it matched.
    fn hash_in_memory(&self, inner: &Inner, run: &Run, data: &[u8]) -> Option<(u32, bool)> {
        let piece = inner.metainfo.geometry.piece(run.piece)?;
        let whole = run.begin == 0 && run.length == inner.metainfo.geometry.piece_size(piece);
        if !(whole && self.all_written && self.done == [run.piece]) {
            return None;
        }
        let good = Sha1::digest(data).as_slice() == inner.metainfo.piece_hash(piece);
        Some((run.piece, good))
    }
}

/// Stores a fetched run block by block, as peer blocks are stored: blocks no longer wanted
/// from us are dropped.
fn store(
    inner: &Inner,
    key: PeerKey,
    addr: SocketAddr,
    run: &Run,
    data: &[u8],
) -> Result<Stored, String> {
    let stats = &inner.stats;
    let mut done = Vec::new();
    let mut all_written = true;
    for block in &run.blocks {
        let at = (block.begin - run.begin) as usize;
        let bytes = &data[at..at + block.length as usize];
        let len = u64::from(block.length);
        let index = block.piece.get();
        let (received, _) = inner
            .lock()
            .book_block(key, addr, index, block.begin, block.length);
        if received == Received::Unwanted {
            stats.wasted.fetch_add(len, Ordering::Relaxed);
            all_written = false;
            continue;
        }
        let result = inner.storage.write_block(block.piece, block.begin, bytes);
        inner.written(index, 1);
        if let Err(e) = result {
            inner.lock().picker.piece_failed(index);
            inner.fail_download("write", &e);
            return Err(e.to_string());
        }
        stats.downloaded.fetch_add(len, Ordering::Relaxed);
        if matches!(received, Received::PieceDone { .. }) {
            done.push(index);
        }
    }
    Ok(Stored { done, all_written })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_encoding_keeps_unreserved_only() {
        assert_eq!(percent_encode(b"a b/c%~.txt"), "a%20b%2Fc%25~.txt");
        assert_eq!(percent_encode("é".as_bytes()), "%C3%A9");
    }

    /// A file with a `.` or `..` component has no URL: `/..` (or `/%2E%2E`, a dot segment
    /// too by the URL standard) would name another file of the server, outside the torrent's
    /// directory. Its neighbours keep theirs, every component encoded.
    #[test]
    fn a_file_a_url_cannot_name_has_no_url() {
        let files = [
            (&["ok", "a b"][..], 10),
            (&["..", "..", "secret"][..], 10),
            (&["x", "."][..], 10),
        ];
        let mut list = Vec::new();
        for (path, length) in files {
            let path: Vec<Vec<u8>> = path.iter().map(|c| c.as_bytes().to_vec()).collect();
            list.push(bencoded_file(&path, length));
        }
        let info = format!(
            "d5:filesl{}e4:name3:dir12:piece lengthi16384e6:pieces20:{}e",
            list.concat(),
            "x".repeat(20)
        );
        let torrent = format!("d4:info{info}e");
        let metainfo = Metainfo::from_bytes(torrent.as_bytes()).expect("torrent");
        assert_eq!(
            file_urls("http://mirror/data", &metainfo),
            [
                Some("http://mirror/data/dir/ok/a%20b".to_string()),
                None,
                None
            ]
        );
    }

    fn bencoded_file(path: &[Vec<u8>], length: u64) -> String {
        let components: String = path
            .iter()
            .map(|c| format!("{}:{}", c.len(), String::from_utf8_lossy(c)))
            .collect();
        format!("d6:lengthi{length}e4:pathl{components}ee")
    }

    #[test]
    fn pseudo_addresses_are_distinct_and_not_routable() {
        assert_ne!(pseudo_addr(1), pseudo_addr(2));
        assert_eq!(pseudo_addr(1).to_string(), "[100::1]:0");
    }

    #[test]
    fn content_range_is_parsed() {
        assert_eq!(
            content_range("bytes 100-199/1000"),
            Some((100, 199, Some(1000)))
        );
        assert_eq!(content_range("bytes 100-199/*"), Some((100, 199, None)));
        assert_eq!(content_range("bytes */1000"), None);
    }
}
