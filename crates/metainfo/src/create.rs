//! Creating v1 torrents from a file or a directory.
//!
//! Files of a directory are ordered by their whole path as bytes, '/' between components (the
//! order mktorrent and transmission-create give, so the info-hash is theirs), empty files
//! included, symlinks followed (as they do; a loop, or a directory link out of the shared
//! directory, which pow's storage would not seed from, is an error; a dangling link is
//! skipped), special files (FIFOs, sockets, devices) skipped. Piece hashes are computed by one thread per core, each reading its own
//! contiguous run of pieces with positioned reads, so nothing is buffered beyond one piece per thread.

use crate::{Geometry, Metainfo, MetainfoError, PieceIndex};
use pow_bencode::{dict, Value};
use sha1::{Digest, Sha1};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Default)]
pub struct CreateOptions {
    /// Bytes per piece; `None` picks one from the total size ([`auto_piece_length`]).
    pub piece_length: Option<u64>,
    /// Trackers as BEP 12 tiers. The first URL also goes in `announce`.
    pub trackers: Vec<Vec<String>>,
    /// BEP 19 web seeds.
    pub web_seeds: Vec<String>,
    /// BEP 5 `nodes`: DHT nodes (host and port) for a trackerless torrent's users to
    /// bootstrap from.
    pub dht_nodes: Vec<(String, u16)>,
    pub private: bool,
    /// The info dictionary's `source` (mktorrent's `-s`).
    pub source: Option<String>,
    /// The torrent's `name` instead of the file's or directory's (mktorrent's `-n`).
    pub name: Option<String>,
    pub comment: Option<String>,
    /// Seconds since the epoch; `None` leaves `creation date` out.
    pub creation_date: Option<i64>,
    /// Defaults to `pow/<version>`.
    pub created_by: Option<String>,
    /// Hashing threads; `None` uses every core.
    pub threads: Option<usize>,
}

#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: no files to put in a torrent", .0.display())]
    Empty(PathBuf),
    #[error("{}: file name is not valid UTF-8", .0.display())]
    NonUtf8Name(PathBuf),
    #[error("{}: has no name to give the torrent", .0.display())]
    NoName(PathBuf),
    #[error("{}: a symlink to a directory it is in (a loop)", .0.display())]
    Loop(PathBuf),
    #[error(
        "{}: a symlink to a directory outside the one shared (pow seeds only files under it; \
         copy or move that directory in)",
        .0.display()
    )]
    OutsideTree(PathBuf),
    #[error("{}: changed while it was being hashed", .0.display())]
    Changed(PathBuf),
    #[error("{what} {url:?} is not a URL that clients can use ({expected})")]
    BadUrl {
        what: &'static str,
        url: String,
        expected: &'static str,
    },
    #[error(
        "name {0:?} is not one file or directory name that clients keep as it is (empty, `.`, \
         `..`, or with `/`, `\\` or a control character)"
    )]
    BadName(String),
    /// The path is shown escaped (`{:?}`): its control character would act on the terminal.
    #[error(
        "{0:?}: its name has a `\\` or a control character, which clients (pow too) take out \
         of a torrent's names, so nobody could seed it from here; rename it"
    )]
    UnkeptName(PathBuf),
    #[error("invalid torrent: {0}")]
    Invalid(#[from] MetainfoError),
    #[error(transparent)]
    Geometry(#[from] crate::GeometryError),
}

/// The created torrent: its bytes (to write to a `.torrent` file) and the parsed form.
#[derive(Debug, Clone)]
pub struct Created {
    pub bytes: Vec<u8>,
    pub metainfo: Metainfo,
}

/// A power of two from 16 KiB to 16 MiB giving at most about 1,500 pieces.
pub fn auto_piece_length(total_length: u64) -> u64 {
    let target = total_length.div_ceil(1500).max(1);
    target
        .next_power_of_two()
        .clamp(16 * 1024, 16 * 1024 * 1024)
}

#[derive(Debug)]
struct SourceFile {
    /// Components below the torrent root (empty for a single-file torrent).
    components: Vec<String>,
    disk_path: PathBuf,
    length: u64,
}

/// Builds a torrent of the file or directory at `path`.
pub fn create(path: &Path, options: &CreateOptions) -> Result<Created, CreateError> {
    create_from(&Content::scan(path)?, options)
}

/// What a torrent of a file or directory will hold, found before any piece is hashed.
#[derive(Debug)]
pub struct Content {
    name: String,
    is_dir: bool,
    /// In torrent order.
    files: Vec<SourceFile>,
}

/// The torrent's `name` for content at `path`: its last component, also when given as `.`,
/// `..` or `dir/` (as mktorrent takes the basename).
pub fn content_name(path: &Path) -> Result<String, CreateError> {
    let last = |p: &Path| p.file_name().map(|n| n.to_owned());
    let name = std::path::absolute(path)
        .ok()
        .and_then(|p| last(&p))
        .or_else(|| std::fs::canonicalize(path).ok().and_then(|p| last(&p)))
        .ok_or_else(|| CreateError::NoName(path.to_path_buf()))?;
    name.into_string()
        .map_err(|_| CreateError::NonUtf8Name(path.to_path_buf()))
}

impl Content {
    /// The files under `path` in the order a torrent of it lists them (a single file: itself).
    /// Empty content is an error.
    pub fn scan(path: &Path) -> Result<Content, CreateError> {
        let io = |source| CreateError::Io {
            path: path.to_path_buf(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(io)?;
        let name = content_name(path)?;
        let files = if meta.is_dir() {
            let mut files = Vec::new();
            let mut ancestors = vec![(meta.dev(), meta.ino())];
            let root = std::fs::canonicalize(path).map_err(io)?;
            let mut walk = Walk {
                root: &root,
                prefix: Vec::new(),
                ancestors: &mut ancestors,
                out: &mut files,
            };
            walk.dir(path)?;
            // By the whole path as bytes, '/' between components, as mktorrent (strcmp) and
            // transmission-create order them: `a b`, `a-b/y`, `a.txt`, `a/x`, `ab`. By
            // components `a/x` came first, and the info-hash differed from theirs.
            files.sort_by_cached_key(|f| f.components.join("/").into_bytes());
            files
        } else {
            vec![SourceFile {
                components: Vec::new(),
                disk_path: path.to_path_buf(),
                length: meta.len(),
            }]
        };
        if files.iter().all(|f| f.length == 0) {
            return Err(CreateError::Empty(path.to_path_buf()));
        }
        Ok(Content {
            name,
            is_dir: meta.is_dir(),
            files,
        })
    }

    /// Each file's path on disk and length, in torrent order.
    pub fn files(&self) -> impl Iterator<Item = (&Path, u64)> {
        self.files.iter().map(|f| (f.disk_path.as_path(), f.length))
    }

    /// Bytes in all files.
    pub fn total_length(&self) -> u64 {
        self.files.iter().map(|f| f.length).sum()
    }

    /// The piece length a torrent of it made with `options` has.
    pub fn piece_length(&self, options: &CreateOptions) -> u64 {
        options
            .piece_length
            .unwrap_or_else(|| auto_piece_length(self.total_length()))
    }

    /// How many pieces a torrent of it made with `options` has.
    pub fn piece_count(&self, options: &CreateOptions) -> u64 {
        self.total_length().div_ceil(self.piece_length(options))
    }
}

/// Builds a torrent of scanned `content`.
pub fn create_from(content: &Content, options: &CreateOptions) -> Result<Created, CreateError> {
    create_with_progress(content, options, &|_| {})
}

/// As [`create_from`], telling `hashed` how many pieces are hashed so far as it goes (from
/// several threads; a count, not a piece index).
pub fn create_with_progress(
    content: &Content,
    options: &CreateOptions,
    hashed: &(dyn Fn(u32) + Sync),
) -> Result<Created, CreateError> {
    check_options(options)?;
    if options.name.is_none() && !kept_by_clients(&content.name) {
        return Err(CreateError::UnkeptName(content.name.clone().into()));
    }
    let files = &content.files;
    let piece_length = content.piece_length(options);
    let lengths: Vec<u64> = files.iter().map(|f| f.length).collect();
    let geometry = Geometry::new(piece_length, lengths, content.piece_count(options), true)?;
    let threads = options
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let pieces = hash_pieces(files, &geometry, threads, hashed)?;

    let mut info = vec![
        (
            "name",
            Value::str(options.name.as_ref().unwrap_or(&content.name)),
        ),
        ("piece length", Value::Int(piece_length as i64)),
        ("pieces", Value::Bytes(pieces)),
    ];
    if content.is_dir {
        let list = files
            .iter()
            .map(|f| {
                dict([
                    ("length", Value::Int(f.length as i64)),
                    (
                        "path",
                        Value::List(f.components.iter().map(|c| Value::str(c)).collect()),
                    ),
                ])
            })
            .collect();
        info.push(("files", Value::List(list)));
    } else {
        info.push(("length", Value::Int(content.total_length() as i64)));
    }
    if options.private {
        info.push(("private", Value::Int(1)));
    }
    if let Some(source) = &options.source {
        info.push(("source", Value::str(source)));
    }

    let mut top = vec![("info", dict(info))];
    let tiers: Vec<Vec<String>> = options
        .trackers
        .iter()
        .filter(|t| !t.is_empty())
        .cloned()
        .collect();
    if let Some(first) = tiers.first().and_then(|t| t.first()) {
        top.push(("announce", Value::str(first)));
    }
    if tiers.len() > 1 || tiers.first().is_some_and(|t| t.len() > 1) {
        let list = tiers
            .iter()
            .map(|tier| Value::List(tier.iter().map(|u| Value::str(u)).collect()))
            .collect();
        top.push(("announce-list", Value::List(list)));
    }
    match options.web_seeds.as_slice() {
        [] => {}
        [one] => top.push(("url-list", Value::str(one))),
        many => top.push((
            "url-list",
            Value::List(many.iter().map(|u| Value::str(u)).collect()),
        )),
    }
    if !options.dht_nodes.is_empty() {
        let nodes = options
            .dht_nodes
            .iter()
            .map(|(host, port)| Value::List(vec![Value::str(host), Value::Int(i64::from(*port))]));
        top.push(("nodes", Value::List(nodes.collect())));
    }
    if let Some(comment) = &options.comment {
        top.push(("comment", Value::str(comment)));
    }
    let created_by = options
        .created_by
        .clone()
        .unwrap_or_else(|| format!("pow/{}", env!("CARGO_PKG_VERSION")));
    top.push(("created by", Value::str(&created_by)));
    if let Some(date) = options.creation_date {
        top.push(("creation date", Value::Int(date)));
    }
    let bytes = dict(top).encode();
    let metainfo = Metainfo::from_bytes(&bytes)?;
    Ok(Created { bytes, metainfo })
}

/// Refuses, before anything is hashed, what would make a torrent no client can use: an empty
/// or scheme-less tracker URL (`-t "a,"` gave an empty one), or a name that is not one path
/// component. (WebTorrent's `ws`/`wss` trackers pass: other clients announce to them.)
pub fn check_options(options: &CreateOptions) -> Result<(), CreateError> {
    for url in options.trackers.iter().flatten() {
        let schemes = ["http", "https", "udp", "ws", "wss"];
        check_url(url, "tracker", &schemes, "http, https, udp, ws or wss")?;
    }
    for url in &options.web_seeds {
        check_url(url, "web seed", &["http", "https"], "http or https")?;
    }
    if let Some(name) = &options.name {
        if !kept_by_clients(name) {
            return Err(CreateError::BadName(name.clone()));
        }
    }
    Ok(())
}

/// A name the parsers (pow's, libtorrent's, Transmission's) keep as it is: one component,
/// without the separators or control characters they take out. A torrent made with another
/// names files that are not where a client, pow included, looks for them.
fn kept_by_clients(name: &str) -> bool {
    crate::path::clean_component(name.as_bytes()).as_deref() == Some(name)
}

/// `scheme://host...` with one of `schemes` (any case), a host, no white space at either end
/// and no control character.
fn check_url(
    url: &str,
    what: &'static str,
    schemes: &[&str],
    expected: &'static str,
) -> Result<(), CreateError> {
    let usable = url.split_once("://").is_some_and(|(scheme, rest)| {
        let host = rest.split(['/', '?', '#']).next().unwrap_or("");
        let host = host.rsplit_once('@').map_or(host, |(_, h)| h);
        schemes.iter().any(|s| s.eq_ignore_ascii_case(scheme))
            && !host.is_empty()
            && !host.starts_with(':')
            && !host.contains(' ')
            && url.trim() == url
            && !url.chars().any(char::is_control)
    });
    if usable {
        Ok(())
    } else {
        Err(CreateError::BadUrl {
            what,
            url: url.to_string(),
            expected,
        })
    }
}

/// The walk of a shared directory: symlinks followed (as mktorrent and libtorrent do: the
/// torrent holds what they point at), a directory link only within the tree (pow seeds a
/// torrent's files only under its directory, its real path checked), dangling links skipped.
struct Walk<'a> {
    /// The shared directory, its real path.
    root: &'a Path,
    prefix: Vec<String>,
    /// The directories (device, inode) above: a link back to one is an error, not an endless
    /// walk.
    ancestors: &'a mut Vec<(u64, u64)>,
    out: &'a mut Vec<SourceFile>,
}

impl Walk<'_> {
    fn dir(&mut self, dir: &Path) -> Result<(), CreateError> {
        let io = |source| CreateError::Io {
            path: dir.to_path_buf(),
            source,
        };
        for entry in std::fs::read_dir(dir).map_err(io)? {
            let entry = entry.map_err(io)?;
            let path = entry.path();
            let name = entry
                .file_name()
                .into_string()
                .map_err(|_| CreateError::NonUtf8Name(path.clone()))?;
            let link = entry.file_type().map_err(io)?.is_symlink();
            let meta = match std::fs::metadata(&path) {
                Ok(meta) => meta,
                // A link to nothing (an editor's lock file `.#x`): there is nothing to share.
                Err(_) if link => continue,
                Err(source) => return Err(CreateError::Io { path, source }),
            };
            // Only what goes into the torrent: a socket or a dangling link is left out whatever
            // its name.
            if (meta.is_dir() || meta.is_file()) && !kept_by_clients(&name) {
                return Err(CreateError::UnkeptName(path));
            }
            if meta.is_dir() {
                let id = (meta.dev(), meta.ino());
                if self.ancestors.contains(&id) {
                    return Err(CreateError::Loop(path));
                }
                if link {
                    let real = std::fs::canonicalize(&path).map_err(|source| CreateError::Io {
                        path: path.clone(),
                        source,
                    })?;
                    if !real.starts_with(self.root) {
                        return Err(CreateError::OutsideTree(path));
                    }
                }
                self.ancestors.push(id);
                self.prefix.push(name);
                self.dir(&path)?;
                self.prefix.pop();
                self.ancestors.pop();
            } else if meta.is_file() {
                let mut components = self.prefix.clone();
                components.push(name);
                self.out.push(SourceFile {
                    components,
                    disk_path: path,
                    length: meta.len(),
                });
            }
        }
        Ok(())
    }
}

/// SHA-1 of every piece, concatenated. Each thread takes a contiguous run of pieces, so it
/// meets the files in order and keeps one open at a time: a dataset of more files than the
/// process may open is hashed all the same.
fn hash_pieces(
    files: &[SourceFile],
    geometry: &Geometry,
    threads: usize,
    hashed: &(dyn Fn(u32) + Sync),
) -> Result<Vec<u8>, CreateError> {
    let done = std::sync::atomic::AtomicU32::new(0);
    // Empty files are in no piece, so no thread opens them: each must still be readable.
    for f in files.iter().filter(|f| f.length == 0) {
        std::fs::File::open(&f.disk_path).map_err(|source| CreateError::Io {
            path: f.disk_path.clone(),
            source,
        })?;
    }
    let count = geometry.piece_count() as usize;
    let threads = threads.clamp(1, count);
    let per_thread = count.div_ceil(threads);
    let mut out = vec![0u8; count * 20];
    std::thread::scope(|scope| {
        let workers: Vec<_> = out
            .chunks_mut(per_thread * 20)
            .enumerate()
            .map(|(t, chunk)| {
                let done = &done;
                scope.spawn(move || -> Result<(), CreateError> {
                    let mut buf = vec![0u8; geometry.piece_length() as usize];
                    let mut open = None;
                    for (i, slot) in chunk.chunks_mut(20).enumerate() {
                        let piece = geometry
                            .piece((t * per_thread + i) as u32)
                            .expect("in range");
                        let data = read_piece(files, &mut open, geometry, piece, &mut buf)?;
                        slot.copy_from_slice(&Sha1::digest(data));
                        hashed(done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1);
                    }
                    Ok(())
                })
            })
            .collect();
        workers
            .into_iter()
            .try_for_each(|w| w.join().expect("hash thread panicked"))
    })?;
    Ok(out)
}

/// Reads the piece into `buf`; `open` is the file last read (its index and handle), kept for
/// the next piece.
fn read_piece<'b>(
    files: &[SourceFile],
    open: &mut Option<(usize, std::fs::File)>,
    geometry: &Geometry,
    piece: PieceIndex,
    buf: &'b mut [u8],
) -> Result<&'b [u8], CreateError> {
    let size = geometry.piece_size(piece) as usize;
    let mut filled = 0;
    for span in geometry.piece_spans(piece) {
        let dest = &mut buf[filled..filled + span.length as usize];
        let path = &files[span.file].disk_path;
        let handle = match open {
            Some((index, handle)) if *index == span.file => handle,
            _ => {
                let handle = std::fs::File::open(path).map_err(|source| CreateError::Io {
                    path: path.clone(),
                    source,
                })?;
                &open.insert((span.file, handle)).1
            }
        };
        handle.read_exact_at(dest, span.offset).map_err(|source| {
            if source.kind() == std::io::ErrorKind::UnexpectedEof {
                CreateError::Changed(path.clone())
            } else {
                CreateError::Io {
                    path: path.clone(),
                    source,
                }
            }
        })?;
        filled += span.length as usize;
    }
    debug_assert_eq!(filled, size);
    Ok(&buf[..size])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trackers(tiers: &[&[&str]]) -> CreateOptions {
        CreateOptions {
            trackers: tiers
                .iter()
                .map(|t| t.iter().map(|u| u.to_string()).collect())
                .collect(),
            ..CreateOptions::default()
        }
    }

    #[test]
    fn tracker_web_seed_and_name_checks() {
        for good in [
            "http://127.0.0.1:6969/announce",
            "HTTPS://tracker.example/a?k=1",
            "udp://[::1]:6969",
            "http://user@host/announce",
            "wss://tracker.webtorrent.dev",
        ] {
            check_options(&trackers(&[&[good]])).unwrap();
        }
        for bad in [
            "",
            "tracker.example:6969/announce",
            "ftp://tracker.example/",
            "http://",
            "http:///announce",
            "http://:6969/announce",
            "http://a b/announce",
            "http://a/\nannounce",
            "http://a/announce ",
        ] {
            let e = check_options(&trackers(&[&["http://ok/"], &["udp://ok:1", bad]])).unwrap_err();
            assert!(
                matches!(&e, CreateError::BadUrl { what: "tracker", url, .. } if url == bad),
                "{bad:?}: {e}"
            );
        }
        let seeds = |url: &str| CreateOptions {
            web_seeds: vec![url.to_string()],
            ..CreateOptions::default()
        };
        check_options(&seeds("http://mirror.example/files/a b")).unwrap();
        assert!(check_options(&seeds("udp://mirror.example/")).is_err());
        let named = |name: &str| CreateOptions {
            name: Some(name.to_string()),
            ..CreateOptions::default()
        };
        check_options(&named("set 2 (final)")).unwrap();
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "a\0",
            "a\\b",
            "a\tb",
            "a\u{9b}b",
            &"n".repeat(256),
        ] {
            assert!(
                matches!(check_options(&named(bad)), Err(CreateError::BadName(_))),
                "{bad:?}"
            );
        }
    }

    /// A name with `\` or a control character comes out of every parser changed (pow's cleans
    /// it, as libtorrent and Transmission do), so the torrent would name files that are not on
    /// disk, and its maker could not seed it: refused, naming the file.
    #[test]
    fn names_the_parsers_would_change_are_refused_naming_the_file() {
        let tmp = std::env::temp_dir().join(format!("pow-unkept-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        for (dir, file) in [
            ("data", "a\\b.csv"),
            ("data", "bell\u{7}"),
            ("tab\there", "x"),
        ] {
            let root = tmp.join(dir);
            std::fs::create_dir_all(&root).unwrap();
            std::fs::write(root.join("ok.csv"), b"fine").unwrap();
            std::fs::write(root.join(file), b"data").unwrap();
            let content = Content::scan(&root).and_then(|c| create_from(&c, &Default::default()));
            let unkept = if dir == "data" {
                root.join(file)
            } else {
                PathBuf::from(dir)
            };
            match content {
                Err(CreateError::UnkeptName(path)) => assert_eq!(path, unkept),
                other => panic!("{file:?}: {other:?}"),
            }
            std::fs::remove_dir_all(&root).unwrap();
        }
        // A dangling link with such a name is not shared anyway: not in the way.
        let root = tmp.join("data");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(root.join("ok.csv"), b"fine").unwrap();
        std::os::unix::fs::symlink("gone", root.join(".#lock\u{7}")).unwrap();
        create(&root, &Default::default()).unwrap();
        let single = tmp.join("one\\file.bin");
        std::fs::write(&single, b"data").unwrap();
        let err = create(&single, &Default::default()).unwrap_err();
        assert!(err.to_string().contains("rename it"), "{err}");
        let bell = tmp.join("bell\u{7}.bin");
        std::fs::write(&bell, b"data").unwrap();
        let err = create(&bell, &Default::default()).unwrap_err().to_string();
        assert!(
            err.contains("bell\\u{7}.bin") && !err.contains('\u{7}'),
            "{err}"
        );
        let renamed = CreateOptions {
            name: Some("one file.bin".into()),
            ..CreateOptions::default()
        };
        create(&single, &renamed).unwrap();
        std::fs::remove_dir_all(&tmp).unwrap();
    }
}
