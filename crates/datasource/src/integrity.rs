//! Integrity of loaded content, beyond the per-piece SHA-1 the engine checks as it downloads.
//!
//! **The content MD5 rule** (used by the loader to check and by publishing to name torrents):
//! the MD5 of the torrent's content bytes in torrent order, i.e. every file that is not a
//! BEP 47 padding file, concatenated in the order of the info dictionary. For a single-file
//! torrent that is simply the file's MD5, which is what the 2019 `seed_final.py` computed for
//! the zip it published. For a multi-file torrent it is the MD5 of the same byte stream the
//! pieces hash, so it needs no extra convention about paths or separators.

use md5::{Digest, Md5};
use pow_metainfo::Metainfo;
use serde::Serialize;
use sha2::Sha256;
use std::io::Read;
use std::path::Path;

/// Hex digests of the content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContentDigests {
    /// MD5, hex.
    pub md5: String,
    /// SHA-256, hex (computed only when asked for).
    pub sha256: Option<String>,
    /// Bytes read.
    pub bytes: u64,
}

/// Reads the content of `metainfo` stored under `root` once, sequentially, and digests it
/// by the rule above. `with_sha256` adds SHA-256 in the same pass.
pub fn content_digests(
    metainfo: &Metainfo,
    root: &Path,
    with_sha256: bool,
) -> std::io::Result<ContentDigests> {
    let mut md5 = Md5::new();
    let mut sha256 = with_sha256.then(Sha256::new);
    let mut buf = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    for file in metainfo.files.iter().filter(|f| !f.attr.pad) {
        let path = file.path.under(root);
        let handle = std::fs::File::open(&path)
            .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        let mut reader = handle.take(file.length);
        let mut read_here = 0u64;
        loop {
            let n = reader.read(&mut buf)?;
            if n == 0 {
                break;
            }
            md5.update(&buf[..n]);
            if let Some(h) = sha256.as_mut() {
                h.update(&buf[..n]);
            }
            read_here += n as u64;
        }
        if read_here != file.length {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!(
                    "{}: {read_here} bytes, the torrent says {}",
                    path.display(),
                    file.length
                ),
            ));
        }
        bytes += read_here;
    }
    Ok(ContentDigests {
        md5: hex::encode(md5.finalize()),
        sha256: sha256.map(|h| hex::encode(h.finalize())),
        bytes,
    })
}

/// The MD5 a torrent's file name claims: `<32 hex digits>.torrent`, lowercased.
pub fn md5_named_by(torrent_file_name: &str) -> Option<String> {
    let stem = torrent_file_name.strip_suffix(".torrent")?;
    (stem.len() == 32 && stem.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| stem.to_ascii_lowercase())
}

/// Outcome of one integrity check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Checked and good.
    Passed,
    /// Checked and bad.
    Failed,
    /// Nothing to check against (e.g. the graph has no sha256 for this source).
    Skipped,
}

/// One integrity check as reported to the user (and in `--json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// `sha1-pieces`, `md5-torrent-name`, `md5-field`, `sha256-field`, `file-name`.
    pub name: &'static str,
    /// What happened.
    pub outcome: Outcome,
    /// The figures or the mismatch, in words.
    pub detail: String,
}

impl Check {
    pub(crate) fn new(name: &'static str, outcome: Outcome, detail: String) -> Check {
        Check {
            name,
            outcome,
            detail,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(
            md5_named_by("D9DA5CE947C6F1C127DFCDC2EDE63320.torrent").as_deref(),
            Some("d9da5ce947c6f1c127dfcdc2ede63320")
        );
        assert_eq!(
            md5_named_by("d9da5ce947c6f1c127dfcdc2ede6332.torrent"),
            None
        );
        assert_eq!(md5_named_by("x.torrent"), None);
        assert_eq!(md5_named_by("d9da5ce947c6f1c127dfcdc2ede63320"), None);
    }
}
