//! BitTorrent v1 metainfo: reading `.torrent` files, creating them, and the piece/block/file
//! geometry every other crate relies on.
//!
//! - [`Metainfo::from_bytes`] parses single- and multi-file v1 torrents (and hybrid v1+v2 ones,
//!   as v1), with the info-hash taken over the raw bytes of the `info` value as they stand in the
//!   file. v2-only torrents are refused with [`MetainfoError::V2Only`].
//! - [`geometry`] holds piece count, piece sizes, 16 KiB blocks and byte-range-to-file spans.
//! - [`path`] turns names from the file into [`path::SafePath`]s that cannot leave the target
//!   directory (the exact rule is documented there).
//! - [`create`] builds new torrents from a file or directory, hashing on all cores.
//! - [`magnet`] parses magnet links and makes one for a torrent ([`magnet_link`]).

pub mod create;
pub mod geometry;
pub mod magnet;
pub mod path;

use pow_bencode::{Kind, Node};
use sha1::{Digest, Sha1};
use std::collections::{HashMap, HashSet};
use std::fmt;

pub use geometry::{Block, FileSpan, Geometry, GeometryError, PieceIndex, BLOCK_SIZE};
pub use magnet::{magnet_link, Magnet, MagnetError};
pub use path::SafePath;

/// SHA-1 of the bencoded `info` dictionary: the torrent's identity in BitTorrent v1.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InfoHash(pub [u8; 20]);

impl InfoHash {
    pub fn of(info_bytes: &[u8]) -> InfoHash {
        InfoHash(Sha1::digest(info_bytes).into())
    }
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
    pub fn from_hex(text: &str) -> Option<InfoHash> {
        let mut out = [0u8; 20];
        hex::decode_to_slice(text, &mut out).ok()?;
        Some(InfoHash(out))
    }
}

impl fmt::Display for InfoHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for InfoHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "InfoHash({})", self.to_hex())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MetainfoError {
    #[error(transparent)]
    Bencode(#[from] pow_bencode::Error),
    #[error("torrent file is not a dictionary")]
    NotADictionary,
    #[error("missing or invalid 'info' dictionary")]
    MissingInfo,
    #[error("BitTorrent v2 only: this torrent has no v1 piece hashes, and pow reads v1 and hybrid torrents")]
    V2Only,
    #[error("missing or invalid '{0}'")]
    BadField(&'static str),
    #[error("'pieces' length {0} is not a multiple of 20")]
    BadPiecesLength(usize),
    #[error("file {index}: {problem}")]
    BadFile { index: usize, problem: &'static str },
    #[error("no files in torrent")]
    NoFiles,
    #[error("total length overflows 64 bits")]
    LengthOverflow,
    #[error("hybrid torrent's v1 and v2 file lists disagree")]
    HybridMismatch,
    #[error(transparent)]
    Geometry(#[from] GeometryError),
}

/// BEP 47 file attributes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FileAttr {
    pub pad: bool,
    pub executable: bool,
    pub hidden: bool,
    pub symlink: bool,
}

impl FileAttr {
    fn parse(raw: &[u8]) -> FileAttr {
        FileAttr {
            pad: raw.contains(&b'p'),
            executable: raw.contains(&b'x'),
            hidden: raw.contains(&b'h'),
            symlink: raw.contains(&b'l'),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileEntry {
    /// Path components exactly as stored (for a single-file torrent: the name), when they
    /// differ from `path`'s after the name ([`FileEntry::raw_components`]); `None` when they
    /// are the same, as nearly always (a second copy of every path was a fifth of the memory
    /// a torrent of 100,000 files took).
    raw_path: Option<Box<[Box<[u8]>]>>,
    /// Where the file goes, relative to the download directory (starts with the torrent's
    /// cleaned name, for single- and multi-file torrents alike). See [`path`] for the rule.
    pub path: SafePath,
    pub length: u64,
    /// Offset of the file's first byte in the concatenated content.
    pub offset: u64,
    pub attr: FileAttr,
    /// BEP 47 `symlink path`, cleaned, relative to the download directory.
    pub symlink_target: Option<SafePath>,
}

impl FileEntry {
    /// The path components exactly as stored in the torrent (for a single-file torrent: its
    /// name).
    pub fn raw_components(&self) -> impl Iterator<Item = &[u8]> + '_ {
        let (stored, cleaned) = match &self.raw_path {
            Some(raw) => (Some(raw.iter().map(|c| &c[..])), None),
            // Only a multi-file torrent's files go without: their path is the name, then these.
            None => (
                None,
                Some(self.path.components().skip(1).map(str::as_bytes)),
            ),
        };
        stored
            .into_iter()
            .flatten()
            .chain(cleaned.into_iter().flatten())
    }

    /// The stored path as text (lossy for bytes that are not UTF-8), for display.
    pub fn raw_path_lossy(&self) -> Vec<String> {
        self.raw_components()
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect()
    }

    /// Keeps the raw components where they are about to differ from `path`'s.
    fn keep_raw_path(&mut self) {
        if self.raw_path.is_none() {
            self.raw_path = Some(self.raw_components().map(Box::from).collect());
        }
    }
}

/// A parsed v1 torrent.
#[derive(Debug, Clone)]
pub struct Metainfo {
    pub info_hash: InfoHash,
    /// The `info` dictionary's bytes exactly as in the file (what the info-hash is over, and
    /// what metadata exchange sends).
    pub info_bytes: Vec<u8>,
    /// The cleaned name: the directory (multi-file) or file (single-file) created on disk.
    pub name: String,
    pub raw_name: Vec<u8>,
    /// True when the torrent has `files` (a directory), false for a single `length`.
    pub multi_file: bool,
    pub files: Vec<FileEntry>,
    pub piece_hashes: Vec<[u8; 20]>,
    pub geometry: Geometry,
    pub private: bool,
    /// The info dictionary's `source` (mktorrent's and transmission-create's `-s`): a tag,
    /// usually a private tracker's, that gives the same files a different info-hash.
    pub source: Option<String>,
    /// Set when the info dict also carries v2 fields (`meta version` 2).
    pub hybrid: bool,
    pub announce: Option<String>,
    /// BEP 12 tiers as stored (empty tiers and non-UTF-8 URLs dropped).
    pub announce_list: Vec<Vec<String>>,
    /// BEP 19 web seeds (`url-list`, a string or a list).
    pub url_list: Vec<String>,
    /// BEP 17 `httpseeds`.
    pub http_seeds: Vec<String>,
    /// BEP 5 `nodes`: DHT nodes to bootstrap from, as `host:port` (`[v6]:port`); entries
    /// that are not a host and a port from 1 to 65535 are dropped.
    pub dht_nodes: Vec<String>,
    pub creation_date: Option<i64>,
    pub comment: Option<String>,
    pub created_by: Option<String>,
}

/// A DHT node as `host:port`, an IPv6 address in brackets (`[::1]:6881`).
pub fn dht_node_name(host: &str, port: u16) -> String {
    match host.contains(':') && !host.starts_with('[') {
        true => format!("[{host}]:{port}"),
        false => format!("{host}:{port}"),
    }
}

impl Metainfo {
    /// Parses a `.torrent` file's bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Metainfo, MetainfoError> {
        let root = pow_bencode::decode_with(bytes, pow_bencode::Options::torrent_file())?;
        if root.as_dict().is_none() {
            return Err(MetainfoError::NotADictionary);
        }
        let info = root.get("info").ok_or(MetainfoError::MissingInfo)?;
        if info.as_dict().is_none() {
            return Err(MetainfoError::MissingInfo);
        }
        let info_hash = InfoHash::of(info.raw);
        let hybrid = info.get("meta version").and_then(Node::as_int) == Some(2);

        let pieces = match info.get("pieces") {
            Some(node) => node.as_bytes().ok_or(MetainfoError::BadField("pieces"))?,
            None if hybrid || info.get("file tree").is_some() => return Err(MetainfoError::V2Only),
            None => return Err(MetainfoError::BadField("pieces")),
        };
        if pieces.len() % 20 != 0 {
            return Err(MetainfoError::BadPiecesLength(pieces.len()));
        }
        let piece_hashes: Vec<[u8; 20]> = pieces
            .chunks_exact(20)
            .map(|c| c.try_into().expect("20 bytes"))
            .collect();

        let piece_length = info
            .get("piece length")
            .and_then(Node::as_int)
            .filter(|&l| l > 0)
            .ok_or(MetainfoError::BadField("piece length"))?;

        let raw_name = info
            .get("name.utf-8")
            .and_then(Node::as_bytes)
            .or_else(|| info.get("name").and_then(Node::as_bytes))
            .ok_or(MetainfoError::BadField("name"))?;
        let name = path::clean_component(raw_name).unwrap_or_else(|| info_hash.to_hex());

        let (multi_file, mut files) = match (info.get("files"), info.get("length")) {
            (Some(list), _) => (true, parse_files(list, &name)?),
            (None, Some(length)) => {
                let length = length
                    .as_int()
                    .and_then(|l| u64::try_from(l).ok())
                    .ok_or(MetainfoError::BadField("length"))?;
                let attr = info
                    .get("attr")
                    .and_then(Node::as_bytes)
                    .map(FileAttr::parse)
                    .unwrap_or_default();
                let single = FileEntry {
                    raw_path: Some(Box::new([Box::from(raw_name)])),
                    path: SafePath::from_components([name.as_bytes()]),
                    length,
                    offset: 0,
                    attr,
                    symlink_target: None,
                };
                (false, vec![single])
            }
            (None, None) => return Err(MetainfoError::BadField("length")),
        };
        if files.is_empty() {
            return Err(MetainfoError::NoFiles);
        }
        let mut offset: u64 = 0;
        for file in &mut files {
            file.offset = offset;
            offset = offset
                .checked_add(file.length)
                .ok_or(MetainfoError::LengthOverflow)?;
        }
        if hybrid {
            check_hybrid_files(info, &files)?;
        }
        let geometry = Geometry::new(
            piece_length as u64,
            files.iter().map(|f| f.length).collect(),
            piece_hashes.len() as u64,
            false,
        )?;

        let private = info.get("private").and_then(Node::as_int) == Some(1);
        let text = |key: &str| root.get(key).and_then(Node::as_str).map(str::to_string);
        let announce = text("announce").filter(|a| !a.is_empty());
        let announce_list = root
            .get("announce-list")
            .and_then(Node::as_list)
            .map(|tiers| {
                tiers
                    .iter()
                    .filter_map(Node::as_list)
                    .map(|tier| string_list(tier))
                    .filter(|tier| !tier.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        let url_list = root.get("url-list").map(string_or_list).unwrap_or_default();
        let http_seeds = root
            .get("httpseeds")
            .map(string_or_list)
            .unwrap_or_default();

        let dht_nodes = root
            .get("nodes")
            .and_then(Node::as_list)
            .unwrap_or_default()
            .iter()
            .filter_map(|entry| {
                let pair = entry.as_list()?;
                let host = pair.first()?.as_str()?.trim();
                let port = u16::try_from(pair.get(1)?.as_int()?).ok()?;
                if host.is_empty() || port == 0 {
                    return None;
                }
                Some(dht_node_name(host, port))
            })
            .collect();

        Ok(Metainfo {
            info_hash,
            info_bytes: info.raw.to_vec(),
            name,
            raw_name: raw_name.to_vec(),
            multi_file,
            files,
            piece_hashes,
            geometry,
            private,
            source: info
                .get("source")
                .and_then(Node::as_str)
                .map(str::to_string),
            hybrid,
            announce,
            announce_list,
            url_list,
            http_seeds,
            dht_nodes,
            creation_date: root.get("creation date").and_then(Node::as_int),
            comment: text("comment.utf-8").or_else(|| text("comment")),
            created_by: text("created by"),
        })
    }

    /// Reads and parses a `.torrent` file.
    pub fn from_file(path: &std::path::Path) -> Result<Metainfo, ReadError> {
        let bytes = std::fs::read(path).map_err(|source| ReadError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Metainfo::from_bytes(&bytes).map_err(|source| ReadError::Parse {
            path: path.to_path_buf(),
            source,
        })
    }

    pub fn total_length(&self) -> u64 {
        self.geometry.total_length()
    }

    /// The trackers as BEP 12 tiers: `announce-list` when present (it supersedes `announce`),
    /// else the single `announce` URL as one tier.
    pub fn tracker_tiers(&self) -> Vec<Vec<String>> {
        if !self.announce_list.is_empty() {
            self.announce_list.clone()
        } else {
            self.announce.iter().map(|a| vec![a.clone()]).collect()
        }
    }

    pub fn piece_hash(&self, piece: PieceIndex) -> &[u8; 20] {
        &self.piece_hashes[piece.as_usize()]
    }
}

/// A `.torrent` that could not be read or parsed, with its path.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {source}", path.display())]
    Parse {
        path: std::path::PathBuf,
        source: MetainfoError,
    },
}

fn string_list(nodes: &[Node<'_>]) -> Vec<String> {
    nodes
        .iter()
        .filter_map(Node::as_str)
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

fn string_or_list(node: &Node<'_>) -> Vec<String> {
    match &node.kind {
        Kind::Bytes(_) => string_list(std::slice::from_ref(node)),
        Kind::List(items) => string_list(items),
        _ => Vec::new(),
    }
}

/// The `files` list of a multi-file torrent. Paths get the cleaned torrent name in front.
fn parse_files(list: &Node<'_>, name: &str) -> Result<Vec<FileEntry>, MetainfoError> {
    let list = list.as_list().ok_or(MetainfoError::BadField("files"))?;
    let mut files = Vec::with_capacity(list.len());
    for (index, entry) in list.iter().enumerate() {
        let bad = |problem| MetainfoError::BadFile { index, problem };
        if entry.as_dict().is_none() {
            return Err(bad("not a dictionary"));
        }
        let attr = entry
            .get("attr")
            .and_then(Node::as_bytes)
            .map(FileAttr::parse)
            .unwrap_or_default();
        // A BEP 47 symlink holds no data; some creators leave its length out.
        let length = match entry.get("length").and_then(Node::as_int) {
            Some(length) => length,
            None if attr.symlink => 0,
            None => return Err(bad("missing length")),
        };
        let length = u64::try_from(length).map_err(|_| bad("negative length"))?;
        let path_node = entry.get("path.utf-8").or_else(|| entry.get("path"));
        let pad_name;
        let raw_path: Vec<&[u8]> = match path_node {
            Some(node) => {
                let parts = node.as_list().ok_or(bad("path is not a list"))?;
                parts
                    .iter()
                    .map(Node::as_bytes)
                    .collect::<Option<_>>()
                    .ok_or(bad("path component is not a string"))?
            }
            // BEP 47 pad files need no real path; give them one under `.pad` like libtorrent.
            None if attr.pad => {
                pad_name = length.to_string();
                vec![b".pad", pad_name.as_bytes()]
            }
            None => return Err(bad("missing path")),
        };
        let symlink_target = if attr.symlink {
            let target = entry
                .get("symlink path")
                .and_then(Node::as_list)
                .ok_or(bad("symlink without 'symlink path'"))?;
            let parts: Vec<&[u8]> = target.iter().filter_map(Node::as_bytes).collect();
            Some(SafePath::prefixed(name, parts))
        } else {
            None
        };
        let path = SafePath::prefixed(name, raw_path.iter().copied());
        let as_cleaned = path
            .components()
            .skip(1)
            .map(str::as_bytes)
            .eq(raw_path.iter().copied());
        files.push(FileEntry {
            raw_path: (!as_cleaned).then(|| raw_path.into_iter().map(Box::from).collect()),
            path,
            length,
            offset: 0,
            attr,
            symlink_target,
        });
    }
    separate_paths(&mut files);
    Ok(files)
}

/// Renames each file whose path an earlier file has, or a directory of the torrent has (a file
/// `a` beside a file `a/b`), with a `.N` suffix, as libtorrent 2.0.8 does: every directory is
/// taken first, so no file is written where another file needs a directory. Each path's next
/// suffix is kept, so N files of one path take N steps, not N^2/2 (a hostile torrent of
/// 40,000 equal paths took minutes to parse).
///
/// The paths taken are borrowed from the files (a clone of each was most of the time and
/// memory of parsing a torrent of 100,000 files); only the new names are owned.
fn separate_paths(files: &mut [FileEntry]) {
    let mut renamed: Vec<(usize, SafePath)> = Vec::new();
    {
        let mut taken: HashSet<&str> = HashSet::with_capacity(files.len());
        for file in files.iter() {
            for dir in file.path.ancestors() {
                if !taken.insert(dir) {
                    break;
                }
            }
        }
        let mut new_names: HashSet<String> = HashSet::new();
        let mut next_suffix: HashMap<&str, usize> = HashMap::new();
        for (index, file) in files.iter().enumerate() {
            // A name an earlier file was renamed to is taken as well.
            if !new_names.contains(file.path.as_str()) && taken.insert(file.path.as_str()) {
                continue;
            }
            let n = next_suffix.entry(file.path.as_str()).or_insert(1);
            let mut name = file.path.with_suffix(*n);
            while taken.contains(name.as_str()) || !new_names.insert(name.to_string()) {
                *n += 1;
                name = file.path.with_suffix(*n);
            }
            *n += 1;
            renamed.push((index, name));
        }
    }
    for (index, name) in renamed {
        files[index].keep_raw_path();
        files[index].path = name;
    }
}

/// A hybrid torrent carries its files twice (v1 `files`, v2 `file tree`); a client that reads
/// only one of them must still refuse a torrent where they differ, or v1 and v2 peers would
/// disagree about the content. Pad files exist only in the v1 list.
fn check_hybrid_files(info: &Node<'_>, files: &[FileEntry]) -> Result<(), MetainfoError> {
    let Some(tree) = info.get("file tree") else {
        return Ok(());
    };
    let v1_files: Vec<(Vec<&[u8]>, u64)> = files
        .iter()
        .filter(|f| !f.attr.pad)
        .map(|f| (f.raw_components().collect(), f.length))
        .collect();
    // A single-file v1 torrent keeps the name as its one component; v2 does the same. Each
    // v2 file is compared as the walk reaches it, its path borrowed: a copy of each path
    // made a 1 MB tree of long, deeply nested names cost gigabytes.
    let mut next = 0;
    walk_file_tree(tree, &mut Vec::new(), 0, &mut |path, length| {
        let same = v1_files
            .get(next)
            .is_some_and(|(v1_path, v1_length)| *v1_length == length && v1_path[..] == *path);
        next += 1;
        same
    })?;
    if next != v1_files.len() {
        return Err(MetainfoError::HybridMismatch);
    }
    Ok(())
}

/// Calls `visit` with each file of a v2 `file tree` (its path and length), in order; stops
/// with `HybridMismatch` at the first for which it returns false.
fn walk_file_tree<'a>(
    node: &Node<'a>,
    prefix: &mut Vec<&'a [u8]>,
    depth: usize,
    visit: &mut impl FnMut(&[&'a [u8]], u64) -> bool,
) -> Result<(), MetainfoError> {
    let dict = node.as_dict().ok_or(MetainfoError::BadField("file tree"))?;
    for (key, child) in dict {
        if key.is_empty() {
            let length = child
                .get("length")
                .and_then(Node::as_int)
                .and_then(|l| u64::try_from(l).ok())
                .ok_or(MetainfoError::BadField("file tree"))?;
            if !visit(prefix, length) {
                return Err(MetainfoError::HybridMismatch);
            }
            continue;
        }
        if depth > 64 {
            return Err(MetainfoError::BadField("file tree"));
        }
        prefix.push(key);
        walk_file_tree(child, prefix, depth + 1, visit)?;
        prefix.pop();
    }
    Ok(())
}
