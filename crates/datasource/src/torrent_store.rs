//! Torrent stores: where published `<md5>.torrent` files live. Either a directory (local or a
//! shared mount) or an HTTP base URL (`GET BASE/<name>`). No credentials, no OAuth: the 2019
//! flow needed Google Drive tokens and could list only the first 10 files.
//!
//! A store may hold `index.json`, a JSON array of [`IndexEntry`], so `pow store list` can say
//! what is available without fetching every torrent. A directory store without one is listed
//! by reading its `*.torrent` files.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Name of the optional listing file in a store.
pub const INDEX_FILE: &str = "index.json";
/// A torrent larger than this is refused: real ones are kilobytes to a few MiB, and an HTTP
/// store must not be able to fill memory.
pub const MAX_TORRENT_BYTES: u64 = 64 << 20;
/// Same bound for `index.json`.
const MAX_INDEX_BYTES: u64 = 64 << 20;
/// Connect and whole-request timeout for HTTP stores.
const HTTP_TIMEOUT: Duration = Duration::from_secs(30);

/// A place `.torrent` files are fetched from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TorrentStore {
    /// A directory holding `<name>.torrent` files.
    Dir(PathBuf),
    /// An HTTP or HTTPS base URL, without the trailing slash.
    Http(String),
}

/// One line of a store's `index.json` (every field but `name` optional).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexEntry {
    /// The torrent file name, `<md5>.torrent`.
    pub name: String,
    /// What the dataset is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Info-hash, hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info_hash: Option<String>,
    /// Content size in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
}

impl TorrentStore {
    /// Reads a store spec: an `http://` URL, or a directory (relative paths are taken relative to
    /// `base`, the `.pow` directory for `pow.toml`, the working directory on the command line).
    pub fn parse(spec: &str, base: &Path) -> Result<TorrentStore> {
        let lower = spec.to_ascii_lowercase();
        if lower.starts_with("http://") || lower.starts_with("https://") {
            return Ok(TorrentStore::Http(spec.trim_end_matches('/').to_string()));
        }
        if lower.contains("://") {
            return Err(Error::Store {
                store: spec.to_string(),
                message:
                    "unknown scheme; a torrent store is a directory or an http:// or https:// URL"
                        .into(),
            });
        }
        Ok(TorrentStore::Dir(base.join(spec)))
    }

    /// How the store is named in messages.
    pub fn describe(&self) -> String {
        match self {
            TorrentStore::Dir(dir) => dir.display().to_string(),
            TorrentStore::Http(url) => url.clone(),
        }
    }

    /// The bytes of torrent `name` (a bare file name; no `/`, no `..`).
    pub fn fetch(&self, name: &str) -> Result<Vec<u8>> {
        check_file_name(name)?;
        match self {
            TorrentStore::Dir(dir) => {
                let path = dir.join(name);
                if !dir.is_dir() {
                    return Err(self.error(format!("directory {} does not exist", dir.display())));
                }
                match std::fs::metadata(&path) {
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        return Err(Error::TorrentNotInStore {
                            store: self.describe(),
                            name: name.to_string(),
                        })
                    }
                    Err(e) => return Err(Error::io(&path)(e)),
                    // A FIFO hung the load (and every command waiting for the project's
                    // store) for good, and a link to /dev/zero would have read until memory
                    // ran out: both report a size of 0.
                    Ok(m) if !m.is_file() => {
                        return Err(self.error(format!("{name} is not a regular file")))
                    }
                    Ok(m) if m.len() > MAX_TORRENT_BYTES => {
                        return Err(self.error(format!(
                        "{name} is {} bytes, over the {MAX_TORRENT_BYTES}-byte limit for a torrent",
                        m.len()
                    )))
                    }
                    Ok(_) => {}
                }
                // Opened without waiting (a FIFO put there since the look would block the
                // open) and looked at again as opened; bounded, as it may grow meanwhile.
                let file = {
                    use std::os::unix::fs::OpenOptionsExt;
                    std::fs::OpenOptions::new()
                        .read(true)
                        .custom_flags(libc::O_NONBLOCK)
                        .open(&path)
                        .map_err(Error::io(&path))?
                };
                if !file.metadata().map_err(Error::io(&path))?.is_file() {
                    return Err(self.error(format!("{name} is not a regular file")));
                }
                let mut bytes = Vec::new();
                file.take(MAX_TORRENT_BYTES + 1)
                    .read_to_end(&mut bytes)
                    .map_err(Error::io(&path))?;
                if bytes.len() as u64 > MAX_TORRENT_BYTES {
                    return Err(self.error(format!(
                        "{name} is over the {MAX_TORRENT_BYTES}-byte limit for a torrent"
                    )));
                }
                Ok(bytes)
            }
            TorrentStore::Http(_) => {
                self.http_get(name, MAX_TORRENT_BYTES)?
                    .ok_or_else(|| Error::TorrentNotInStore {
                        store: self.describe(),
                        name: name.to_string(),
                    })
            }
        }
    }

    /// What the store offers: its `index.json`, or for a directory without one, its torrents.
    pub fn list(&self) -> Result<Vec<IndexEntry>> {
        let index = match self {
            TorrentStore::Dir(dir) => {
                if !dir.is_dir() {
                    return Err(self.error(format!("directory {} does not exist", dir.display())));
                }
                let path = dir.join(INDEX_FILE);
                match std::fs::read(&path) {
                    Ok(bytes) => Some(bytes),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                    Err(e) => return Err(Error::io(&path)(e)),
                }
            }
            TorrentStore::Http(_) => self.http_get(INDEX_FILE, MAX_INDEX_BYTES)?,
        };
        let mut entries = match (index, self) {
            (Some(bytes), _) => serde_json::from_slice::<Vec<IndexEntry>>(&bytes)
                .map_err(|e| self.error(format!("bad {INDEX_FILE}: {e}")))?,
            (None, TorrentStore::Dir(dir)) => scan_dir(dir)?,
            (None, TorrentStore::Http(_)) => {
                return Err(self.error(format!(
                    "no {INDEX_FILE} (an HTTP store can be listed only through its index)"
                )))
            }
        };
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(entries)
    }

    fn error(&self, message: String) -> Error {
        Error::Store {
            store: self.describe(),
            message,
        }
    }

    /// A client for the store. Redirects are followed up to 10, never from https to http (as
    /// for trackers). For a `put`, only those that keep the method and body (307, 308) on the
    /// same host: a PUT answered `303 See Other` was followed as a GET, whose 200 read as
    /// "already stored"; any other redirect is the answer, an error naming where it points.
    fn http_client(&self, put: bool) -> Result<reqwest::blocking::Client> {
        let redirects = reqwest::redirect::Policy::custom(move |attempt| {
            let from = attempt.previous().last().cloned();
            let downgrade = attempt.url().scheme() == "http"
                && from.as_ref().is_some_and(|f| f.scheme() == "https");
            let keeps_the_put = matches!(attempt.status().as_u16(), 307 | 308)
                && from
                    .as_ref()
                    .is_some_and(|f| f.host_str() == attempt.url().host_str());
            if downgrade {
                attempt.error("a redirect from https to http")
            } else if attempt.previous().len() > 10 {
                attempt.error("more than 10 redirects")
            } else if put && !keeps_the_put {
                attempt.stop()
            } else {
                attempt.follow()
            }
        });
        reqwest::blocking::Client::builder()
            .redirect(redirects)
            .tls_backend_preconfigured((*pow_tls::client_config()).clone())
            .timeout(HTTP_TIMEOUT)
            .connect_timeout(HTTP_TIMEOUT)
            .user_agent(concat!("pow/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| self.error(format!("HTTP client: {e}")))
    }

    /// `PUT BASE/name` with a bearer token (a `pow serve` store): `Ok(true)` if written now,
    /// `Ok(false)` if the store already had these bytes.
    pub(crate) fn http_put(&self, name: &str, bytes: &[u8], token: Option<&str>) -> Result<bool> {
        let TorrentStore::Http(base) = self else {
            unreachable!("http_put on a directory store")
        };
        let url = format!("{base}/{name}");
        let mut request = self.http_client(true)?.put(&url).body(bytes.to_vec());
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request
            .send()
            .map_err(|e| self.error(format!("PUT {url}: {}", describe_reqwest(&e))))?;
        let status = response.status();
        match status.as_u16() {
            201 => Ok(true),
            // 409: the store has this name with other bytes (the same content, other torrent
            // options) and keeps it, as a directory store does.
            200 | 409 => Ok(false),
            _ => {
                let location = response
                    .headers()
                    .get(reqwest::header::LOCATION)
                    .and_then(|l| l.to_str().ok())
                    .map(str::to_string);
                let body = response.text().unwrap_or_default();
                let detail = serde_json::from_str::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| v["error"].as_str().map(str::to_string))
                    .unwrap_or(body);
                let detail = if detail.trim().is_empty() {
                    String::new()
                } else {
                    format!(": {detail}")
                };
                let hint = match (status.as_u16(), location) {
                    (401, _) => " (give the server's token with --token or POW_STORE_TOKEN)".into(),
                    (300..=399, Some(to)) => format!(" (it redirects to {to}; nothing stored)"),
                    _ => String::new(),
                };
                Err(self.error(format!("PUT {url}: HTTP {status}{detail}{hint}")))
            }
        }
    }

    /// `GET BASE/name`; `Ok(None)` on 404.
    fn http_get(&self, name: &str, limit: u64) -> Result<Option<Vec<u8>>> {
        let TorrentStore::Http(base) = self else {
            unreachable!("http_get on a directory store")
        };
        let url = format!("{base}/{name}");
        let response = self
            .http_client(false)?
            .get(&url)
            .send()
            .map_err(|e| self.error(format!("GET {url}: {}", describe_reqwest(&e))))?;
        let status = response.status();
        if status == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !status.is_success() {
            return Err(self.error(format!("GET {url}: HTTP {status}")));
        }
        if response.content_length().is_some_and(|n| n > limit) {
            return Err(self.error(format!("GET {url}: body over the {limit}-byte limit")));
        }
        let mut body = Vec::new();
        response
            .take(limit + 1)
            .read_to_end(&mut body)
            .map_err(|e| self.error(format!("GET {url}: {e}")))?;
        if body.len() as u64 > limit {
            return Err(self.error(format!("GET {url}: body over the {limit}-byte limit")));
        }
        Ok(Some(body))
    }
}

/// reqwest's top-level message is "error sending request"; the cause says what happened.
fn describe_reqwest(e: &reqwest::Error) -> String {
    let mut text = if e.is_connect() {
        "cannot connect".to_string()
    } else if e.is_timeout() {
        "timed out".to_string()
    } else {
        e.to_string()
    };
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text.push_str(pow_tls::hint(&text));
    text
}

/// A torrent name is one path component: the store is a flat namespace, and a name from the
/// graph must never reach outside it (`../x`) or into a URL's query.
pub fn check_file_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains(['/', '\\', '?', '#', '%'])
        && !name.chars().any(char::is_control);
    if ok {
        Ok(())
    } else {
        Err(Error::Store {
            store: "-".into(),
            message: format!("{name:?} is not a plain file name"),
        })
    }
}

/// Lists a directory store that has no index: every `*.torrent` that parses.
fn scan_dir(dir: &Path) -> Result<Vec<IndexEntry>> {
    let mut entries = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(Error::io(dir))? {
        let path = entry.map_err(Error::io(dir))?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if !name.ends_with(".torrent") || !path.is_file() {
            continue;
        }
        let entry = match pow_metainfo::Metainfo::from_file(&path) {
            Ok(m) => IndexEntry {
                name: name.to_string(),
                description: m.comment.clone(),
                info_hash: Some(m.info_hash.to_hex()),
                size: Some(m.total_length()),
            },
            Err(_) => IndexEntry {
                name: name.to_string(),
                description: Some("(not a valid torrent)".into()),
                info_hash: None,
                size: None,
            },
        };
        entries.push(entry);
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs() {
        let base = Path::new("/p/.pow");
        assert_eq!(
            TorrentStore::parse("torrents", base).unwrap(),
            TorrentStore::Dir("/p/.pow/torrents".into())
        );
        assert_eq!(
            TorrentStore::parse("/srv/t", base).unwrap(),
            TorrentStore::Dir("/srv/t".into())
        );
        assert_eq!(
            TorrentStore::parse("http://127.0.0.1:8080/torrents/", base).unwrap(),
            TorrentStore::Http("http://127.0.0.1:8080/torrents".into())
        );
        assert_eq!(
            TorrentStore::parse("https://data.openworm.org/torrents/", base).unwrap(),
            TorrentStore::Http("https://data.openworm.org/torrents".into())
        );
        assert!(TorrentStore::parse("ftp://x/", base).is_err());
    }

    #[test]
    fn names_stay_inside_the_store() {
        for bad in [
            "",
            "..",
            "../x.torrent",
            "a/b.torrent",
            "x?y",
            "a\\b",
            "x\n",
        ] {
            assert!(check_file_name(bad).is_err(), "{bad:?}");
        }
        check_file_name("d9da5ce947c6f1c127dfcdc2ede63320.torrent").unwrap();
    }
}
