//! `pow serve`: the upload web page, and the HTTP torrent store the loader fetches from.
//!
//! A researcher uploads a `.zip` (`POST /upload`, multipart, streamed to disk while its MD5 and
//! SHA-256 are computed, never held in memory); the server checks it is a zip by its bytes,
//! creates the torrent, names it `<md5>.torrent`, stores it and has it seeded. Everything lives
//! under one data directory ([`Library`]); the torrent written last (or, for a torrent put into
//! the store before, the dataset's record) is the commit point, so a crash at any moment leaves
//! either a whole dataset or nothing visible.
//!
//! This crate knows HTTP and files, not peers: seeding goes through the [`Seeder`] the caller
//! gives (the `pow` binary runs the engine behind it).
//!
//! Endpoints: `GET /` (the page), `POST /upload`, `GET /api/datasets`,
//! `GET /content/<md5>/<name>` (the bytes, with `Range`: the server is a web seed),
//! `GET /torrents/<md5>.torrent`, `GET /torrents/index.json`, and
//! `PUT /torrents/<md5>.torrent` with the configured bearer token.

mod content;
mod library;
mod page;
mod routes;
mod upload;

pub use library::{Dataset, Library, LibraryError, Published};
pub use pow_metainfo::magnet::magnet_link;
pub use routes::{router, start_seeding_dataset};

use pow_metainfo::Metainfo;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

/// Multipart framing and the description field on top of the file itself: a request whose
/// `Content-Length` exceeds the upload limit by more than this is refused before it is read,
/// and a body in which more than this is not the file is stopped as it comes.
pub const FORM_OVERHEAD: u64 = 64 * 1024;
/// Longest description kept with a dataset, in characters (a line break is one): the page's
/// `maxlength` counts UTF-16 units, so it never allows more. (A limit of 4096 bytes refused
/// what the page let through, 1,400 CJK characters or 4,000 with line breaks, after the
/// whole file had been uploaded.)
pub const MAX_DESCRIPTION_CHARS: usize = 4096;
/// The most bytes a description's field (or another field) may take in a form: 4 a character
/// of UTF-8, a browser sending each line break as CRLF.
pub const MAX_DESCRIPTION_BYTES: usize = 4 * MAX_DESCRIPTION_CHARS;

#[derive(Clone)]
pub struct ServeConfig {
    /// Largest accepted upload (the file's bytes).
    pub max_upload_size: u64,
    /// Bearer token that allows `PUT /torrents/<md5>.torrent`; `None` disables PUT.
    pub token: Option<String>,
    /// Paces the web seed's bodies (`GET /content/...`): called with each chunk's size before
    /// it is sent, it says how long to wait first (`pow serve --max-upload-rate` shares one
    /// budget between these bodies and the BitTorrent seeds).
    pub content_pacer: Option<ContentPacer>,
    /// Uploads received at once; one more is refused (503, `Retry-After`) before it is read.
    pub max_concurrent_uploads: usize,
    /// An upload whose body sends nothing for this long is dropped (408), with what it sent.
    pub upload_idle_timeout: std::time::Duration,
    /// Bytes a second an upload must average after its first `upload_idle_timeout` (408).
    pub upload_min_rate: u64,
}

/// Uploads `pow serve` receives at once unless told otherwise.
pub const DEFAULT_MAX_CONCURRENT_UPLOADS: u16 = 16;

/// See [`ServeConfig::content_pacer`].
pub type ContentPacer = Arc<dyn Fn(usize) -> Option<std::time::Duration> + Send + Sync>;

/// What the page and `/api/datasets` say about a dataset's seeding.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct SeedStatus {
    pub seeding: bool,
    pub peers: usize,
    pub uploaded: u64,
    pub pieces_have: u32,
    pub pieces_total: u32,
    /// How the seed knew its pieces at its start: `file` (its resume file) or `full-check`.
    pub started_from: Option<&'static str>,
    /// Why it is not seeding, if it failed to start.
    pub error: Option<String>,
}

pub type SeedFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

/// Seeds datasets for the server (implemented by the `pow` binary with the engine).
pub trait Seeder: Send + Sync + 'static {
    /// Starts seeding `metainfo` from `data_dir` (the directory that holds the torrent's
    /// content); resolves once it is serving, or with why it cannot.
    fn seed(&self, metainfo: Arc<Metainfo>, data_dir: PathBuf) -> SeedFuture;
    /// The current status of the torrent with this info-hash (hex); `None` if never started.
    fn status(&self, info_hash: &str) -> Option<SeedStatus>;
}

/// `error` and its causes, each named once (a cause its error's message already carries is
/// not repeated): what the log says of a failure.
pub(crate) fn detail(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(error) = cause {
        let more = error.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cause = error.source();
    }
    text
}

/// Serves `app` on `listener` until `shutdown` resolves (requests in flight are finished).
pub async fn run(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}
