//! The BitTorrent data-source loader, graph side (the 2019 `BitTorrentDataSourceDirLoader`,
//! which never worked): resolve a data source, fetch its `torrent_file_name` from the torrent
//! store (cached in `.pow/torrents/`), choose its base directory, run the integrity checks
//! on what is on disk, and record in the graph where the verified data now is.
//!
//! The download itself is not here: this crate knows no sockets. The caller (the `pow`
//! binary) downloads into [`LoadPlan::base_dir`] with the engine, then calls
//! [`LoadPlan::check_integrity`] and [`PowDir::record_load`].
//!
//! Load state lives in its own named graph, [`LOADER_STATE_GRAPH`]: it is about this machine
//! (local paths), so `pow export` leaves it out.

use crate::error::{Error, Result};
use crate::integrity::{md5_named_by, Check, ContentDigester, ContentDigests, Outcome};
use crate::schema::shorten;
use crate::show::{Shown, Value};
use crate::store::PowDir;
use crate::torrent_store::{check_file_name, TorrentStore};
use oxigraph::model::vocab::xsd;
use oxigraph::model::{GraphNameRef, Literal, NamedNode, Quad, Term};
use pow_metainfo::Metainfo;
use serde::Serialize;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The loader's directory key: its subdirectory of `data_source_data/` (2019 used the Python
/// class's qualified name the same way).
pub const LOADER_KEY: &str = "BitTorrentDataSourceDirLoader";
/// Named graph of machine-local load state.
pub const LOADER_STATE_GRAPH: &str = "urn:x-local:loader-state";

/// Whether `quad` is this machine's load state ([`LOADER_STATE_GRAPH`]): never exported,
/// saved or imported.
pub(crate) fn is_load_state(quad: &oxigraph::model::Quad) -> bool {
    matches!(&quad.graph_name, oxigraph::model::GraphName::NamedNode(n)
        if n.as_str() == LOADER_STATE_GRAPH)
}
/// Namespace of the load-state predicates.
pub const LOADER_VOCAB: &str = "urn:x-pow:loader#";
/// Where fetched torrents are cached inside `.pow/`.
pub const TORRENT_CACHE_DIR: &str = "torrents";

/// Everything needed to load one data source, resolved from the graph and the store.
#[derive(Debug, Clone)]
pub struct LoadPlan {
    /// `Type:key`.
    pub id: String,
    /// Full IRI.
    pub iri: String,
    /// The `torrent_file_name` value.
    pub torrent_file_name: String,
    /// The cached `.torrent`.
    pub torrent_path: PathBuf,
    /// Where the torrent came from: `cache` or the store's name.
    pub torrent_from: String,
    /// The parsed torrent.
    pub metainfo: Arc<Metainfo>,
    /// The directory the torrent's content goes into (`<base_dir>/<torrent name>`).
    pub base_dir: PathBuf,
    /// `md5` values in the graph (lowercase hex).
    pub md5_field: Vec<String>,
    /// `sha256` values in the graph (lowercase hex).
    pub sha256_field: Vec<String>,
    /// `info_hash` values in the graph (lowercase hex); the torrent is one of them.
    pub info_hash_field: Vec<String>,
    /// `file_name` values in the graph.
    pub file_names: Vec<String>,
    /// The info-hash (hex) of other content that an earlier load of this source verified in
    /// `base_dir` (the record named another torrent then): this load is an update, and
    /// downloads beside that content ([`LoadPlan::staged`]).
    pub replaces: Option<String>,
    /// The torrent of the content [`LoadPlan::replaces`] names, while the torrent cache holds
    /// it: which entries of the earlier content are its own, and go with it in an update (see
    /// [`LoadPlan::install_update`]).
    pub replaced: Option<Arc<Metainfo>>,
}

/// The torrent a data source names: by file name in a torrent store, and by info-hash.
#[derive(Debug, Clone)]
pub struct SourceTorrent {
    /// `torrent_file_name`; for a record with an `info_hash` alone, `<info_hash>.torrent`
    /// (the name it is cached under).
    pub file_name: String,
    /// The record's `info_hash` values (lowercase hex).
    pub info_hashes: Vec<String>,
}

/// A data source's record as read for a load: which torrent it names ([`PowDir::torrent_wanted`]).
pub struct TorrentWanted {
    shown: Shown,
    torrent: SourceTorrent,
}

/// A torrent as [`TorrentWanted::fetch`] found it.
pub struct FetchedTorrent {
    /// Where it is kept: the `.pow` directory's torrent cache.
    path: PathBuf,
    /// "cache", or the torrent store it came from.
    from: String,
    metainfo: Metainfo,
}

/// Keeps `bytes` as the cached torrent `name` (written atomically) in the `.pow` directory
/// `pow_dir`, where a load finds it before asking the store: for a torrent fetched from peers
/// by its info-hash.
pub fn cache_torrent(pow_dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    check_file_name(name)?;
    let cache_dir = pow_dir.join(TORRENT_CACHE_DIR);
    remove_interrupted_writes(&cache_dir)?;
    write_atomically(&cache_dir, name, bytes)
}

impl TorrentWanted {
    /// The torrent the record names.
    pub fn torrent(&self) -> &SourceTorrent {
        &self.torrent
    }

    /// The torrent the record names: the copy cached in `pow_dir` if it parses and has an
    /// info-hash the record names, else the torrent store's (then cached). Reads and writes
    /// only files under `pow_dir`, never its graph store. A torrent whose info-hash the record
    /// does not name is refused.
    pub fn fetch(&self, pow_dir: &Path, store: &TorrentStore) -> Result<FetchedTorrent> {
        let wanted = &self.torrent;
        let named = |m: &Metainfo| {
            wanted.info_hashes.is_empty() || wanted.info_hashes.contains(&m.info_hash.to_hex())
        };
        let cache_dir = pow_dir.join(TORRENT_CACHE_DIR);
        let mut fetched = fetch_torrent(&cache_dir, &wanted.file_name, store, false)?;
        if !named(&fetched.metainfo) && fetched.from == "cache" {
            // Cached before the record named its torrent: the store decides.
            fetched = fetch_torrent(&cache_dir, &wanted.file_name, store, true)?;
        }
        if !named(&fetched.metainfo) {
            return Err(Error::NotLoadable {
                id: self.shown.id.clone(),
                why: format!(
                    "{} from {} has info-hash {}, but the record's info_hash is \
                     {}; nothing downloaded (if the record is of an earlier version, save it \
                     with the new info_hash, or with `info_hash = []` to drop it)",
                    wanted.file_name,
                    fetched.from,
                    fetched.metainfo.info_hash.to_hex(),
                    wanted.info_hashes.join(", ")
                ),
            });
        }
        Ok(fetched)
    }
}

/// The torrent `name` cached in `cache_dir` if it parses (unless `refresh`), else the store's
/// copy (then cached atomically).
fn fetch_torrent(
    cache_dir: &Path,
    name: &str,
    store: &TorrentStore,
    refresh: bool,
) -> Result<FetchedTorrent> {
    let cached = cache_dir.join(name);
    if !refresh {
        let parsed = std::fs::read(&cached)
            .ok()
            .and_then(|bytes| Metainfo::from_bytes(&bytes).ok());
        if let Some(metainfo) = parsed {
            return Ok(FetchedTorrent {
                path: cached,
                from: "cache".into(),
                metainfo,
            });
        }
    }
    let bytes = store.fetch(name)?;
    let metainfo = Metainfo::from_bytes(&bytes).map_err(|e| Error::Store {
        store: store.describe(),
        message: format!("{name} is not a valid torrent: {e}"),
    })?;
    remove_interrupted_writes(cache_dir)?;
    write_atomically(cache_dir, name, &bytes)?;
    Ok(FetchedTorrent {
        path: cached,
        from: store.describe(),
        metainfo,
    })
}

impl SourceTorrent {
    fn of(shown: &Shown) -> Result<SourceTorrent> {
        let info_hashes = lowercase(literals(shown, "info_hash"));
        let not_loadable = |why: String| Error::NotLoadable {
            id: shown.id.clone(),
            why,
        };
        let file_name = match (
            literals(shown, "torrent_file_name").as_slice(),
            &info_hashes[..],
        ) {
            ([one], _) => one.clone(),
            ([], [hash]) => format!("{hash}.torrent"),
            ([], _) => {
                return Err(not_loadable(
                    "it has no torrent_file_name or info_hash, so there is nothing to fetch \
                     by BitTorrent"
                        .into(),
                ))
            }
            (many, _) => {
                return Err(not_loadable(format!(
                    "it has {} torrent_file_name values",
                    many.len()
                )))
            }
        };
        check_file_name(&file_name)?;
        // Both name the content's MD5. Apart, one of them is stale (a save that changed only
        // `torrent_file_name` kept the old `md5`), and the load failed its md5 check only
        // after downloading everything.
        let md5s = lowercase(literals(shown, "md5"));
        if let Some(named) = md5_named_by(&file_name) {
            if !md5s.is_empty() && !md5s.contains(&named) {
                return Err(not_loadable(format!(
                    "its md5 {} and its torrent_file_name {file_name} name different content: \
                     one of them is stale (save the record with both); nothing downloaded",
                    md5s.join(", ")
                )));
            }
        }
        Ok(SourceTorrent {
            file_name,
            info_hashes,
        })
    }

    /// The one info-hash the record names, by which the torrent can be fetched from peers.
    pub fn info_hash(&self) -> Option<&str> {
        match self.info_hashes.as_slice() {
            [one] => Some(one),
            _ => None,
        }
    }
}

/// The literal values of field `name` of a shown source.
fn literals(shown: &Shown, name: &str) -> Vec<String> {
    shown
        .fields
        .iter()
        .filter(|f| f.name == name)
        .flat_map(|f| f.values.iter())
        .filter_map(|v| match v {
            Value::Term(Term::Literal(l)) => Some(l.value().to_string()),
            _ => None,
        })
        .collect()
}

fn lowercase(values: Vec<String>) -> Vec<String> {
    values.into_iter().map(|s| s.to_ascii_lowercase()).collect()
}

/// What a previous successful load recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LoadRecord {
    /// The base directory.
    pub directory: String,
    /// Info-hash, hex.
    pub info_hash: String,
    /// The torrent's file name in the store (and in `.pow/torrents/`).
    pub torrent_file_name: Option<String>,
}

/// The integrity checks' results plus the digests they computed.
#[derive(Debug, Clone)]
pub struct IntegrityReport {
    /// Every check, in order.
    pub checks: Vec<Check>,
    /// Content digests (absent when the pieces were not all there).
    pub digests: Option<ContentDigests>,
}

impl IntegrityReport {
    /// The first failed check, if any.
    pub fn failure(&self) -> Option<&Check> {
        self.checks.iter().find(|c| c.outcome == Outcome::Failed)
    }
}

fn vocab(name: &str) -> NamedNode {
    NamedNode::new_unchecked(format!("{LOADER_VOCAB}{name}"))
}

fn state_graph() -> NamedNode {
    NamedNode::new_unchecked(LOADER_STATE_GRAPH)
}

impl PowDir {
    /// The torrent store: `spec` if given (relative to the working directory), else
    /// `torrent_store` of `pow.toml` (relative to `.pow/`).
    pub fn torrent_store(&self, spec: Option<&str>) -> Result<TorrentStore> {
        match spec {
            Some(spec) => TorrentStore::parse(spec, Path::new(".")),
            None => TorrentStore::parse(&self.config().torrent_store, self.dir()),
        }
    }

    /// Which torrent data source `id` names.
    pub fn source_torrent(&self, id: &str) -> Result<SourceTorrent> {
        SourceTorrent::of(&self.show(id)?)
    }

    /// Resolves data source `id` and fetches its torrent (the cached copy if there is one,
    /// else from `store`). `base_dir` overrides the directory the content goes into; without
    /// it, a previous load's directory is reused, else the default
    /// `.pow/data_source_data/BitTorrentDataSourceDirLoader/<key>/`.
    pub fn plan_load(
        &self,
        id: &str,
        store: &TorrentStore,
        base_dir: Option<&Path>,
    ) -> Result<LoadPlan> {
        let wanted = self.torrent_wanted(id)?;
        let fetched = wanted.fetch(self.dir(), store)?;
        self.plan_fetched(wanted, fetched, base_dir)
    }

    /// The first step of [`PowDir::plan_load`]: what data source `id`'s record says of its
    /// torrent. The next, [`TorrentWanted::fetch`], needs no graph store, so that a load can
    /// let go of the store while a slow torrent store answers (other `pow` commands wait for
    /// the store, a minute at most).
    pub fn torrent_wanted(&self, id: &str) -> Result<TorrentWanted> {
        let shown = self.show(id)?;
        let torrent = SourceTorrent::of(&shown)?;
        Ok(TorrentWanted { shown, torrent })
    }

    /// The last step of [`PowDir::plan_load`]: the plan for a torrent fetched as `wanted` says.
    pub fn plan_fetched(
        &self,
        wanted: TorrentWanted,
        fetched: FetchedTorrent,
        base_dir: Option<&Path>,
    ) -> Result<LoadPlan> {
        let TorrentWanted {
            shown,
            torrent: wanted,
        } = wanted;
        let FetchedTorrent {
            path: torrent_path,
            from: torrent_from,
            metainfo,
        } = fetched;
        let previous = self.load_record(&shown.iri)?;
        let base_dir = match (base_dir, &previous) {
            (Some(dir), _) => dir.to_path_buf(),
            (None, Some(record)) => PathBuf::from(&record.directory),
            (None, None) => self.default_base_dir(&shown.iri),
        };
        let previous = previous.filter(|record| {
            record.info_hash != metainfo.info_hash.to_hex()
                && same_directory(Path::new(&record.directory), &base_dir)
        });
        let replaced = previous
            .as_ref()
            .and_then(|record| self.recorded_torrent(record))
            .map(Arc::new);
        let replaces = previous.map(|record| record.info_hash);
        Ok(LoadPlan {
            id: shown.id.clone(),
            iri: shown.iri.clone(),
            torrent_file_name: wanted.file_name,
            torrent_path,
            torrent_from,
            metainfo: Arc::new(metainfo),
            base_dir,
            md5_field: lowercase(literals(&shown, "md5")),
            sha256_field: lowercase(literals(&shown, "sha256")),
            info_hash_field: wanted.info_hashes,
            file_names: literals(&shown, "file_name"),
            replaces,
            replaced,
        })
    }

    /// `.pow/data_source_data/BitTorrentDataSourceDirLoader/<key>/`, where `<key>` is the
    /// source's key made into one safe path component ([`default_dir_name`]).
    pub fn default_base_dir(&self, iri: &str) -> PathBuf {
        self.dir()
            .join(&self.config().download_dir)
            .join(LOADER_KEY)
            .join(default_dir_name(iri))
    }

    /// Refuses a load whose content would overwrite another data source's verified content:
    /// a load into a directory where a load or a publish of another source recorded content
    /// under the same name (two versions of `worms.zip` published under two keys, say, and
    /// loaded with one `--base-dir`), or one inside such content, or around it, that shares a
    /// path with it (see [`PowDir::others_with_content_at`]). Nothing is downloaded; the
    /// error names the other source and the path. A load of content this source's own record
    /// names in that directory is let through: it is there already, verified (a file
    /// published, then its directory published under another key). A torrent whose name
    /// starts with `.pow-` is refused too: such names in a base directory are pow's own (an
    /// update's directory).
    pub fn refuse_overwriting_others(&self, plan: &LoadPlan) -> Result<()> {
        if plan.metainfo.name.starts_with(RESERVED_PREFIX) {
            return Err(Error::NotLoadable {
                id: plan.id.clone(),
                why: format!(
                    "its torrent's name {} starts with {RESERVED_PREFIX}, which pow keeps for its \
                     own files in a base directory; nothing downloaded",
                    plan.metainfo.name
                ),
            });
        }
        let verified_here = self.load_record(&plan.iri)?.is_some_and(|record| {
            record.info_hash == plan.metainfo.info_hash.to_hex()
                && same_directory(Path::new(&record.directory), &plan.base_dir)
        });
        if verified_here {
            return Ok(());
        }
        let others = self.others_with_content_at(&plan.iri, &plan.base_dir, &plan.metainfo)?;
        let Some(other) = others.iter().find(|other| other.there) else {
            return Ok(());
        };
        Err(Error::NotLoadable {
            id: plan.id.clone(),
            why: format!(
                "{} holds {}'s verified content (info-hash {}), which this torrent ({}) would \
                 overwrite; nothing downloaded (give another --base-dir)",
                other.at.display(),
                shorten(&other.iri),
                other.info_hash,
                plan.metainfo.info_hash.to_hex(),
            ),
        })
    }

    /// Other data sources (not `iri`) whose verified content, as a load or a publish recorded
    /// it, this torrent's content in `directory` would overlap, with other content. Two overlap where they take the same path (the same name
    /// in the same directory, however named), or where one lies inside the other's and a path
    /// is a file of both, or a file of one and a directory of the other (a load with
    /// `--base-dir` inside another source's directory). Paths are compared resolved (symlinks,
    /// `..`). A record's files are its cached torrent's (when that torrent is the recorded
    /// one); without it, any file or directory at this content's path counts.
    fn others_with_content_at(
        &self,
        iri: &str,
        directory: &Path,
        metainfo: &Metainfo,
    ) -> Result<Vec<Overlap>> {
        let ours = metainfo.info_hash.to_hex();
        let our_directory = resolved(directory);
        let our_root = resolved(&directory.join(&metainfo.name));
        let mut others = Vec::new();
        for other in self.loaded_sources()? {
            let Some(record) = self.load_record(&other)? else {
                continue;
            };
            if other == iri || record.info_hash == ours {
                continue;
            }
            let theirs = self.recorded_torrent(&record);
            let their_directory = Path::new(&record.directory);
            let (at, same_path, there) = match theirs {
                Some(theirs) => {
                    let their_root = resolved(&their_directory.join(&theirs.name));
                    let there = std::fs::symlink_metadata(&their_root).is_ok();
                    let at = overlap(&their_root, &theirs, &our_root, metainfo);
                    (at, their_root == our_root, there)
                }
                None => {
                    let at = Some(our_directory.join(&metainfo.name)).filter(|path| {
                        same_directory(their_directory, directory)
                            && std::fs::symlink_metadata(path).is_ok()
                    });
                    (at, true, true)
                }
            };
            if let Some(at) = at {
                // Named as the caller gave the directory (through a symlink, say).
                let at = match at.strip_prefix(&our_directory) {
                    Ok(inside) => directory.join(inside),
                    Err(_) => at,
                };
                others.push(Overlap {
                    iri: other,
                    info_hash: record.info_hash,
                    at,
                    same_path,
                    there,
                });
            }
        }
        Ok(others)
    }

    /// The torrent a load record names, if the torrent cache still holds it.
    fn recorded_torrent(&self, record: &LoadRecord) -> Option<Metainfo> {
        let name = record.torrent_file_name.as_ref()?;
        let bytes = std::fs::read(self.dir().join(TORRENT_CACHE_DIR).join(name)).ok()?;
        Metainfo::from_bytes(&bytes)
            .ok()
            .filter(|torrent| torrent.info_hash.to_hex() == record.info_hash)
    }

    /// The IRIs of the data sources a load verified on this machine, sorted.
    pub fn loaded_sources(&self) -> Result<Vec<String>> {
        let graph = state_graph();
        let predicate = vocab("localDirectory");
        let mut iris = Vec::new();
        for quad in self.store().quads_for_pattern(
            None,
            Some(predicate.as_ref()),
            None,
            Some(GraphNameRef::NamedNode(graph.as_ref())),
        ) {
            if let oxigraph::model::NamedOrBlankNode::NamedNode(node) = quad?.subject {
                iris.push(node.into_string());
            }
        }
        iris.sort();
        iris.dedup();
        Ok(iris)
    }

    /// What the last successful load of `iri` recorded, if any.
    pub fn load_record(&self, iri: &str) -> Result<Option<LoadRecord>> {
        let subject = NamedNode::new(iri).map_err(|_| Error::UnknownId(iri.to_string()))?;
        let graph = state_graph();
        let value = |name: &str| -> Result<Option<String>> {
            let predicate = vocab(name);
            let found = self
                .store()
                .quads_for_pattern(
                    Some(subject.as_ref().into()),
                    Some(predicate.as_ref()),
                    None,
                    Some(GraphNameRef::NamedNode(graph.as_ref())),
                )
                .next()
                .transpose()?;
            Ok(found.and_then(|q| match q.object {
                Term::Literal(l) => Some(l.value().to_string()),
                _ => None,
            }))
        };
        Ok(match (value("localDirectory")?, value("infoHash")?) {
            (Some(directory), Some(info_hash)) => Some(LoadRecord {
                directory,
                info_hash,
                torrent_file_name: value("torrentFileName")?,
            }),
            _ => None,
        })
    }

    /// Records a verified load: directory, info-hash, torrent name, bytes and time, replacing
    /// what an earlier load recorded, in one transaction.
    pub fn record_load(&self, plan: &LoadPlan, bytes: u64) -> Result<()> {
        let subject = NamedNode::new_unchecked(&plan.iri);
        let graph = state_graph();
        let directory = std::path::absolute(&plan.base_dir).unwrap_or(plan.base_dir.clone());
        let quad = |name: &str, object: Literal| {
            Quad::new(subject.clone(), vocab(name), object, graph.clone())
        };
        let new = [
            quad(
                "localDirectory",
                Literal::new_simple_literal(directory.display().to_string()),
            ),
            quad(
                "infoHash",
                Literal::new_simple_literal(plan.metainfo.info_hash.to_hex()),
            ),
            quad(
                "torrentFileName",
                Literal::new_simple_literal(&plan.torrent_file_name),
            ),
            quad(
                "bytes",
                Literal::new_typed_literal(bytes.to_string(), xsd::INTEGER),
            ),
            quad("status", Literal::new_simple_literal("verified")),
            quad(
                "verifiedAt",
                Literal::new_typed_literal(now_rfc3339(), xsd::DATE_TIME),
            ),
            quad("loader", Literal::new_simple_literal(LOADER_KEY)),
        ];
        // Another source recorded here under this content's name no longer has its content
        // here (a publish of an edited file under another key, say): its record goes. One
        // whose content only overlaps this (a file of a directory published under another
        // key) keeps its record: refused loads aside, the bytes they share are the same.
        let superseded: Vec<NamedNode> = self
            .others_with_content_at(&plan.iri, &plan.base_dir, &plan.metainfo)?
            .into_iter()
            .filter(|other| other.same_path)
            .map(|other| NamedNode::new_unchecked(other.iri))
            .collect();
        let mut txn = self.store().start_transaction()?;
        let mut old: Vec<Quad> = Vec::new();
        for subject in std::iter::once(&subject).chain(&superseded) {
            for q in txn.quads_for_pattern(
                Some(subject.as_ref().into()),
                None,
                None,
                Some(GraphNameRef::NamedNode(graph.as_ref())),
            ) {
                old.push(q?);
            }
        }
        for q in &old {
            txn.remove(q);
        }
        txn.extend(&new);
        txn.commit()?;
        Ok(())
    }
}

impl LoadPlan {
    /// A digester of this source's content by the MD5 rule (with SHA-256 when the graph has
    /// one to compare with), to feed while the content is checked or downloaded.
    pub fn content_digester(&self) -> ContentDigester {
        ContentDigester::new(
            &self.metainfo,
            &self.base_dir,
            !self.sha256_field.is_empty(),
        )
    }

    /// Runs the integrity checks on what is on disk, given how many pieces passed SHA-1
    /// (checked by the engine while downloading, or by a full re-check). The content is read
    /// once, for MD5 (and SHA-256 when the graph has one to compare with): `digested` is a
    /// [`LoadPlan::content_digester`] already fed part of it while it was checked or
    /// downloaded (`None`: from the start), and the rest is read from disk.
    pub fn check_integrity(
        &self,
        pieces_verified: u32,
        digested: Option<ContentDigester>,
    ) -> IntegrityReport {
        let total = self.metainfo.geometry.piece_count();
        let info_hash = self.metainfo.info_hash.to_hex();
        let mut checks = vec![compare_field(
            "info-hash-field",
            "info_hash",
            "torrent info-hash",
            &self.info_hash_field,
            &info_hash,
        )];
        checks.push(Check::new(
            "sha1-pieces",
            if pieces_verified == total {
                Outcome::Passed
            } else {
                Outcome::Failed
            },
            format!("{pieces_verified} of {total} pieces match their SHA-1"),
        ));
        if pieces_verified != total {
            return IntegrityReport {
                checks,
                digests: None,
            };
        }
        let digester = digested.unwrap_or_else(|| self.content_digester());
        let digests = match digester.finish_from_disk() {
            Ok(d) => d,
            Err(e) => {
                let detail = match e.kind() {
                    std::io::ErrorKind::InvalidData => format!(
                        "{e} (cut the file to the torrent's length, or move it away, and load \
                         again)"
                    ),
                    _ => format!("cannot read the content: {e}"),
                };
                checks.push(Check::new("md5-torrent-name", Outcome::Failed, detail));
                return IntegrityReport {
                    checks,
                    digests: None,
                };
            }
        };
        checks.push(match md5_named_by(&self.torrent_file_name) {
            Some(named) if named == digests.md5 => Check::new(
                "md5-torrent-name",
                Outcome::Passed,
                format!("content MD5 {} matches torrent name", digests.md5),
            ),
            Some(_) => Check::new(
                "md5-torrent-name",
                Outcome::Failed,
                format!(
                    "content MD5 {} does not match torrent name {}",
                    digests.md5, self.torrent_file_name
                ),
            ),
            None => Check::new(
                "md5-torrent-name",
                Outcome::Skipped,
                format!(
                    "torrent name {} is not <md5>.torrent",
                    self.torrent_file_name
                ),
            ),
        });
        checks.push(compare_field(
            "md5-field",
            "md5",
            "content md5",
            &self.md5_field,
            &digests.md5,
        ));
        let sha256 = digests.sha256.as_deref().unwrap_or("");
        checks.push(compare_field(
            "sha256-field",
            "sha256",
            "content sha256",
            &self.sha256_field,
            sha256,
        ));
        checks.push(self.check_file_names());
        IntegrityReport {
            checks,
            digests: Some(digests),
        }
    }

    /// The source's `file_name` must be among the files the torrent delivered: its path in the
    /// torrent (`cells/a.zip`, a single file's name) or below the content's root (`a.zip`).
    /// Only the torrent's own files count, not whatever else the base directory holds.
    fn check_file_names(&self) -> Check {
        if self.file_names.is_empty() {
            return Check::new(
                "file-name",
                Outcome::Skipped,
                "no file_name in the graph".into(),
            );
        }
        let root = self.metainfo.name.as_str();
        let delivered = |name: &str| {
            self.metainfo.files.iter().any(|file| {
                let path = file.path.as_str();
                !file.attr.pad
                    && (path == name
                        || path
                            .strip_prefix(root)
                            .and_then(|below| below.strip_prefix('/'))
                            == Some(name))
            })
        };
        let missing: Vec<&String> = self
            .file_names
            .iter()
            .filter(|name| !delivered(name))
            .collect();
        if missing.is_empty() {
            Check::new(
                "file-name",
                Outcome::Passed,
                format!("{} present", self.file_names.join(", ")),
            )
        } else {
            Check::new(
                "file-name",
                Outcome::Failed,
                format!(
                    "file_name {} is not among the torrent's files",
                    missing
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                ),
            )
        }
    }

    /// Where the content is: `<base_dir>/<torrent name>`.
    pub fn content_path(&self) -> PathBuf {
        self.base_dir.join(&self.metainfo.name)
    }

    /// For an update (see [`LoadPlan::replaces`]), the plan that downloads and checks the new
    /// content in `<base_dir>/.pow-update-<info-hash>/` instead, where a stopped or failed
    /// load leaves it for the next one: the verified content in `base_dir` stays whole, and
    /// recorded, until [`LoadPlan::install_update`] puts the new in its place. `None` when the
    /// load goes straight into `base_dir`.
    pub fn staged(&self) -> Option<LoadPlan> {
        self.replaces.as_ref()?;
        let update_dir = self.base_dir.join(format!(
            "{RESERVED_PREFIX}update-{}",
            self.metainfo.info_hash.to_hex()
        ));
        Some(LoadPlan {
            base_dir: update_dir,
            replaces: None,
            replaced: None,
            ..self.clone()
        })
    }

    /// Copies into `staged`'s directory each file of this torrent that is in `base_dir` at the
    /// same path with the same length and not in `staged`'s yet, so that what the two versions
    /// share is found there by the check, not downloaded again, and makes its empty files
    /// (no piece covers them). The kernel copies (`copy_file_range`: a reflink on file systems
    /// that have them) to a temporary name, syncs and renames, so a copy cut short is never
    /// taken for a whole one; a copy is writable by its owner whatever the original's mode.
    /// Returns the bytes copied. The update directory is marked as this source's first (see
    /// [`LoadPlan::remove_abandoned_updates`]).
    pub fn reuse_unchanged_files(&self, staged: &LoadPlan) -> Result<u64> {
        use std::os::unix::fs::PermissionsExt;
        let marker = staged.base_dir.join(UPDATE_OWNER);
        if !marker.exists() {
            std::fs::create_dir_all(&staged.base_dir).map_err(Error::io(&staged.base_dir))?;
            std::fs::write(&marker, &self.iri).map_err(Error::io(&marker))?;
        }
        let mut copied = 0;
        for file in &self.metainfo.files {
            if file.attr.pad || file.symlink_target.is_some() {
                continue;
            }
            let old = self.base_dir.join(file.path.as_str());
            let new = staged.base_dir.join(file.path.as_str());
            if std::fs::symlink_metadata(&new).is_ok() {
                continue;
            }
            let same_length = std::fs::symlink_metadata(&old)
                .is_ok_and(|m| m.is_file() && m.len() == file.length);
            if file.length > 0 && !same_length {
                continue;
            }
            let parent = new.parent().expect("below the update directory");
            std::fs::create_dir_all(parent).map_err(Error::io(parent))?;
            if file.length == 0 {
                std::fs::File::create(&new).map_err(Error::io(&new))?;
                continue;
            }
            let temp = new.with_file_name(format!(
                "{RESERVED_PREFIX}copy-{}",
                new.file_name().expect("a file").to_string_lossy()
            ));
            let copy = || -> std::io::Result<u64> {
                // Left by a copy that was stopped: it has the original's mode from its start,
                // and a read-only one refused this copy on every rerun ("Permission denied").
                match std::fs::remove_file(&temp) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
                let bytes = std::fs::copy(&old, &temp)?;
                let written = std::fs::File::open(&temp)?;
                let mut permissions = written.metadata()?.permissions();
                permissions.set_mode(permissions.mode() | 0o200);
                std::fs::set_permissions(&temp, permissions)?;
                written.sync_all()?;
                std::fs::rename(&temp, &new)?;
                Ok(bytes)
            };
            copied += copy().map_err(Error::io(&new))?;
        }
        Ok(copied)
    }

    /// Puts the verified content of `staged` (this plan's [`LoadPlan::staged`]) in place of
    /// the earlier content at [`LoadPlan::content_path`], with the new content's resume file,
    /// and syncs the directory. A file replaces a file in one rename; a directory (or a change
    /// of kind) takes two, the earlier moved aside into the update directory first, and a load
    /// stopped between or after them finds the new content verified and finishes the install.
    ///
    /// Only the earlier torrent's own files go with it: what else the earlier directory holds
    /// (another source loaded with a `--base-dir` inside it, the user's own files) is moved
    /// into the new one, and where the new content has something at such a path (or is a
    /// file) the update is refused before anything moves. Without the earlier torrent (no
    /// longer cached) whatever the new content has no file at is kept, and the rest goes. While
    /// entries are to be moved, the update directory is marked ([`MOVING`]) and nothing
    /// removes it ([`LoadPlan::remove_update`], [`LoadPlan::remove_abandoned_updates`]): a
    /// stop leaves them there for the next install. Returns what could not be moved (left in
    /// the update directory, which is then kept), each with why.
    pub fn install_update(&self, staged: &LoadPlan) -> Result<Vec<String>> {
        let content = self.content_path();
        let new = staged.content_path();
        let aside = staged.base_dir.join(format!("{RESERVED_PREFIX}replaced"));
        let moving = staged.base_dir.join(MOVING);
        // Paths compare below the content's root: only an earlier torrent of the same name
        // is known to be what is there.
        let earlier = self
            .replaced
            .as_deref()
            .filter(|torrent| torrent.name == self.metainfo.name)
            .and_then(EarlierFiles::of);
        let exists = |path: &Path| std::fs::symlink_metadata(path).is_ok();
        if exists(&aside) {
            if !exists(&content) {
                // Stopped between the two renames.
                std::fs::rename(&new, &content).map_err(Error::io(&content))?;
            }
            // Else stopped after both: the content is the new one already.
        } else {
            let replaces_in_one_rename = match std::fs::symlink_metadata(&content) {
                Ok(old) => old.is_file() && new.is_file(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
                Err(e) => return Err(Error::io(&content)(e)),
            };
            if !replaces_in_one_rename {
                let in_the_way =
                    walk_others(&content, &new, earlier.as_ref(), Walk::Plan).in_the_way;
                // Without the earlier torrent, what is in the way may be its own files, which
                // go; but nothing can be kept inside a file.
                if !in_the_way.is_empty() && (earlier.is_some() || !new.is_dir()) {
                    return Err(Error::NotLoadable {
                        id: self.id.clone(),
                        why: format!(
                            "{} holds {} entries besides the earlier content's files where the \
                             new content has its own (such as {}): move them away and load again",
                            content.display(),
                            in_the_way.len(),
                            in_the_way[0].display()
                        ),
                    });
                }
                std::fs::write(&moving, b"").map_err(Error::io(&moving))?;
                std::fs::rename(&content, &aside).map_err(Error::io(&content))?;
            }
            std::fs::rename(&new, &content).map_err(Error::io(&content))?;
        }
        let mut left = Vec::new();
        if exists(&moving) {
            let walked = walk_others(&aside, &content, earlier.as_ref(), Walk::Move);
            left = walked.failed;
            if earlier.is_some() {
                left.extend(
                    walked.in_the_way.iter().map(|path| {
                        format!("{}: the new content has its own there", path.display())
                    }),
                );
            }
            if left.is_empty() {
                remove_any(&moving)?;
            }
        }
        let hex = self.metainfo.info_hash.to_hex();
        let resume = pow_storage::resume::resume_file_in(&staged.base_dir, &hex);
        if resume.exists() {
            let to = pow_storage::resume::resume_file_in(&self.base_dir, &hex);
            std::fs::rename(&resume, &to).map_err(Error::io(&to))?;
        }
        std::fs::File::open(&self.base_dir)
            .and_then(|dir| dir.sync_all())
            .map_err(Error::io(&self.base_dir))?;
        Ok(left)
    }

    /// After [`LoadPlan::install_update`] and the record: removes the update directory (with
    /// the earlier content, when it was moved aside) and the earlier torrent's resume file.
    /// An update directory still holding entries to move ([`MOVING`]) is kept: false then.
    pub fn remove_update(&self, staged: &LoadPlan) -> Result<bool> {
        if let Some(earlier) = &self.replaces {
            remove_any(&pow_storage::resume::resume_file_in(
                &self.base_dir,
                earlier,
            ))?;
        }
        if staged.base_dir.join(MOVING).exists() {
            return Ok(false);
        }
        remove_any(&staged.base_dir)?;
        Ok(true)
    }

    /// After a load of this source is in place and recorded: removes the update directories in
    /// `base_dir` that an earlier load of it began for other content and never finished (its
    /// definition changed again before the update was loaded, or back), and one for this very
    /// content that a load stopped after recording it left (with the earlier content in it,
    /// once moved aside). Each is marked with the source's IRI; other sources' (and unmarked)
    /// ones stay, and so does one still holding entries an install was moving ([`MOVING`]).
    /// Returns what it removed, and what it kept for that reason.
    pub fn remove_abandoned_updates(&self) -> Result<(Vec<PathBuf>, Vec<PathBuf>)> {
        let prefix = format!("{RESERVED_PREFIX}update-");
        let entries = match std::fs::read_dir(&self.base_dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok((Vec::new(), Vec::new()))
            }
            Err(e) => return Err(Error::io(&self.base_dir)(e)),
        };
        let (mut removed, mut kept) = (Vec::new(), Vec::new());
        for entry in entries {
            let entry = entry.map_err(Error::io(&self.base_dir))?;
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            let ours = name.starts_with(&prefix)
                && std::fs::read_to_string(path.join(UPDATE_OWNER))
                    .is_ok_and(|iri| iri == self.iri);
            if !ours {
                continue;
            }
            if path.join(MOVING).exists() {
                kept.push(path);
            } else {
                remove_any(&path)?;
                removed.push(path);
            }
        }
        Ok((removed, kept))
    }
}

/// In an update directory: entries of the earlier content that are not its torrent's may
/// still be aside in it (see [`LoadPlan::install_update`]).
const MOVING: &str = ".pow-moving";

/// The files of an earlier content directory that are its torrent's, and the directories
/// holding them, relative to the content's root.
struct EarlierFiles {
    files: HashSet<PathBuf>,
    directories: HashSet<PathBuf>,
}

impl EarlierFiles {
    /// `None` for a single-file torrent (its content is one file: nothing else is in it).
    fn of(torrent: &Metainfo) -> Option<EarlierFiles> {
        if !torrent.multi_file {
            return None;
        }
        let mut earlier = EarlierFiles {
            files: HashSet::new(),
            directories: HashSet::new(),
        };
        for file in &torrent.files {
            // A torrent's paths start with its name, which is the root here.
            let path: PathBuf = file.path.components().skip(1).collect();
            for directory in path.ancestors().skip(1) {
                if !earlier.directories.insert(directory.to_path_buf()) {
                    break;
                }
            }
            earlier.files.insert(path);
        }
        Some(earlier)
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Walk {
    /// Only find what is in the way.
    Plan,
    Move,
}

/// What [`walk_others`] found.
#[derive(Default)]
struct Others {
    /// Entries (paths in `from`) where `to` has something else: left where they are.
    in_the_way: Vec<PathBuf>,
    /// Moves that failed, each with why: left where they are.
    failed: Vec<String>,
}

/// Walks the directory `from` (an earlier content) for the entries that are not one of
/// `earlier`'s files and, with [`Walk::Move`], moves each to the same place under `to` (the
/// new content), making its directories. Without `earlier`, every entry counts. A directory of
/// both is walked into; an entry where `to` has something else (or where `to` is not a
/// directory) is in the way. A symbolic link is moved as one, never followed.
fn walk_others(from: &Path, to: &Path, earlier: Option<&EarlierFiles>, walk: Walk) -> Others {
    fn visit(
        from: &Path,
        to: &Path,
        relative: &Path,
        earlier: Option<&EarlierFiles>,
        walk: Walk,
        found: &mut Others,
    ) {
        let directory = from.join(relative);
        let entries = match std::fs::read_dir(&directory) {
            Ok(entries) => entries,
            Err(e) => return found.failed.push(format!("{}: {e}", directory.display())),
        };
        for entry in entries {
            let entry = match entry {
                Ok(entry) => entry,
                Err(e) => return found.failed.push(format!("{}: {e}", directory.display())),
            };
            let path = relative.join(entry.file_name());
            if earlier.is_some_and(|e| e.files.contains(&path)) {
                continue;
            }
            let is_directory = entry.file_type().is_ok_and(|t| t.is_dir());
            let earlier_directory = earlier.is_some_and(|e| e.directories.contains(&path));
            let target = to.join(&path);
            match std::fs::symlink_metadata(&target) {
                Ok(there) if there.is_dir() && is_directory => {
                    visit(from, to, &path, earlier, walk, found);
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    if is_directory && earlier_directory {
                        // Gone from the new content: only what else it holds moves.
                        visit(from, to, &path, earlier, walk, found);
                    } else if walk == Walk::Move {
                        let moved = target
                            .parent()
                            .map_or(Ok(()), std::fs::create_dir_all)
                            .and_then(|()| std::fs::rename(entry.path(), &target));
                        if let Err(e) = moved {
                            found
                                .failed
                                .push(format!("{}: {e}", entry.path().display()));
                        }
                    }
                }
                // Something else there, or `to` is not a directory (ENOTDIR).
                _ if is_directory && earlier_directory => {
                    visit(from, to, &path, earlier, walk, found);
                }
                _ => found.in_the_way.push(from.join(&path)),
            }
        }
    }
    let mut found = Others::default();
    let is_directory = |path: &Path| std::fs::symlink_metadata(path).is_ok_and(|m| m.is_dir());
    if is_directory(from) {
        visit(from, to, Path::new(""), earlier, walk, &mut found);
    }
    found
}

/// The file in an update directory that names the data source it was begun for.
const UPDATE_OWNER: &str = ".pow-source";

/// What names in a base directory that start with this are pow's own.
const RESERVED_PREFIX: &str = ".pow-";

/// Another data source's verified content that a load's would overlap (see
/// [`PowDir::others_with_content_at`]).
struct Overlap {
    iri: String,
    info_hash: String,
    /// The first path found that both would claim.
    at: PathBuf,
    /// Both contents are at the same path (the same name in the same directory).
    same_path: bool,
    /// The other's content is still there (its file or directory exists).
    there: bool,
}

/// Where the content of torrent `b` at `b_root` (its file or directory) would overlap that of
/// `a` at `a_root` (both resolved): the same root, or a path that is a file of both, or a file
/// of one and a directory of the other. `None` when neither content lies inside the other's,
/// or when one does and no such path exists (files beside the other's are no harm).
fn overlap(a_root: &Path, a: &Metainfo, b_root: &Path, b: &Metainfo) -> Option<PathBuf> {
    if a_root == b_root {
        return Some(b_root.to_path_buf());
    }
    if !a_root.starts_with(b_root) && !b_root.starts_with(a_root) {
        return None;
    }
    // A torrent's paths start with its name, which is the root here.
    let under = |root: &Path, file: &pow_metainfo::FileEntry| -> PathBuf {
        file.path
            .components()
            .skip(1)
            .fold(root.to_path_buf(), |path, c| path.join(c))
    };
    let a_files: std::collections::HashSet<PathBuf> =
        a.files.iter().map(|f| under(a_root, f)).collect();
    let mut a_directories = std::collections::HashSet::new();
    for file in &a_files {
        for ancestor in file.ancestors().skip(1) {
            if !a_directories.insert(ancestor.to_path_buf()) {
                break;
            }
        }
    }
    b.files.iter().find_map(|file| {
        let path = under(b_root, file);
        if a_files.contains(&path) || a_directories.contains(&path) {
            return Some(path);
        }
        path.ancestors()
            .skip(1)
            .find(|ancestor| a_files.contains(*ancestor))
            .map(Path::to_path_buf)
    })
}

/// `path` made absolute, with symlinks and `..` resolved as far as it exists, and `..` and
/// `.` taken away lexically past that (a base directory a load has not made yet).
fn resolved(path: &Path) -> PathBuf {
    use std::path::Component;
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut out = PathBuf::new();
    let mut exists = true;
    for component in absolute.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir if !exists => {
                out.pop();
            }
            component => {
                out.push(component);
                if exists {
                    match out.canonicalize() {
                        Ok(real) => out = real,
                        Err(_) => exists = false,
                    }
                }
            }
        }
    }
    out
}

/// Whether `a` and `b` name the same existing directory (however reached: `..`, symlinks).
fn same_directory(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => a.is_dir() && a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// Removes `path` (a file, or a directory and all in it) if it exists.
fn remove_any(path: &Path) -> Result<()> {
    let removed = match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => Err(e),
    };
    removed.map_err(Error::io(path))
}

/// `what` (e.g. "content md5") is `actual`, which must be among the graph's `field` values.
fn compare_field(
    check: &'static str,
    field: &str,
    what: &str,
    values: &[String],
    actual: &str,
) -> Check {
    match values {
        [] => Check::new(check, Outcome::Skipped, format!("no {field} in the graph")),
        values if values.iter().any(|v| v == actual) => Check::new(
            check,
            Outcome::Passed,
            format!("{what} {actual} matches the graph"),
        ),
        values => Check::new(
            check,
            Outcome::Failed,
            format!(
                "{what} {actual} does not match the graph's {}",
                values.join(", ")
            ),
        ),
    }
}

/// Writes `dir/name` so that no reader ever sees half of it: temp file, fsync, rename.
/// The temp file's name carries the writer's PID, so two processes writing the same name
/// never share one, and [`remove_interrupted_writes`] can tell a dead writer's file.
pub fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    write_atomically_as(dir, name, bytes, None)
}

/// As [`write_atomically`], the file given `permissions` before anything is written to it
/// (set after the rename, a file the user keeps private was readable by others for a moment).
pub fn write_atomically_as(
    dir: &Path,
    name: &str,
    bytes: &[u8],
    permissions: Option<std::fs::Permissions>,
) -> Result<()> {
    let commit = |temp: &Path, target: &Path| std::fs::rename(temp, target).map(|()| true);
    write_via_temp(dir, name, bytes, permissions, commit).map(drop)
}

/// As [`write_atomically`], but never replaces `dir/name`: false, and nothing written, when
/// it is there already, also when another writer put it there a moment ago (the temp file is
/// hard-linked to the name, which fails if the name exists; a check and a rename would let
/// two writers both write, the second replacing the first).
pub fn write_new(dir: &Path, name: &str, bytes: &[u8]) -> Result<bool> {
    write_via_temp(dir, name, bytes, None, |temp, target| {
        let linked = match std::fs::hard_link(temp, target) {
            Ok(()) => true,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => false,
            // A file system without hard links: a check and a rename, the best it allows.
            Err(_) if target.exists() => false,
            Err(_) => return std::fs::rename(temp, target).map(|()| true),
        };
        // Linked, the file is written: a temp name left behind is only untidy (the next
        // write into `dir` after this process ends removes it).
        let _ = std::fs::remove_file(temp);
        Ok(linked)
    })
}

/// Writes `bytes` to a temp file in `dir` (given `permissions` first, if any), fsyncs it,
/// and has `commit` move it to `dir/name` (true: it did, and the directory is fsynced). The
/// temp file never outlives a failure.
fn write_via_temp(
    dir: &Path,
    name: &str,
    bytes: &[u8],
    permissions: Option<std::fs::Permissions>,
    commit: impl FnOnce(&Path, &Path) -> std::io::Result<bool>,
) -> Result<bool> {
    use std::io::Write;
    std::fs::create_dir_all(dir).map_err(Error::io(dir))?;
    let target = dir.join(name);
    let temp = dir.join(temp_name(name, std::process::id()));
    let write = || -> std::io::Result<bool> {
        let mut file = create_temp(&temp, permissions.as_ref())?;
        file.write_all(bytes)?;
        file.sync_all()?;
        let committed = commit(&temp, &target)?;
        if committed {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(committed)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&temp);
        Error::io(&target)(e)
    })
}

/// Creates `temp`, never through a link planted at its name (a dead writer's file there, of a
/// reused PID, is removed first), with `permissions` (their rwx bits) from its creation: set
/// after, another user could open it in between and read what is written next.
fn create_temp(
    temp: &Path,
    permissions: Option<&std::fs::Permissions>,
) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mode = permissions.map_or(0o666, |p| p.mode() & 0o777);
    let create = || {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(temp)
    };
    let file = match create() {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            std::fs::remove_file(temp)?;
            create()?
        }
        created => created?,
    };
    if permissions.is_some() {
        // The umask took bits away from `mode`; the old file had them.
        file.set_permissions(std::fs::Permissions::from_mode(mode))?;
    }
    Ok(file)
}

/// The directory name of a source's default base directory: its key (as its IRI has it, the
/// rest percent-encoded) where that is one safe path component, else the key made into one
/// (`/` as `_`, a leading `.` behind `_`) followed by `-` and 16 hex digits of the IRI's
/// SHA-256, so that keys `a/b` and `a_b` get directories of their own (they shared one, and
/// the second load was refused as overwriting the first). A source outside the classes'
/// namespaces is named by the digest alone.
pub fn default_dir_name(iri: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = hex::encode(&Sha256::digest(iri.as_bytes())[..8]);
    let short = shorten(iri);
    let key = match short.split_once(':') {
        Some((_, key)) if short != iri => key,
        _ => return digest,
    };
    let safe = key.replace('/', "_");
    let safe = if safe.starts_with('.') {
        format!("_{safe}")
    } else {
        safe
    };
    if safe == key {
        safe
    } else {
        format!("{safe}-{digest}")
    }
}

/// `.NAME.N.PID.tmp`: N counts this process's writes, so two threads writing one name at
/// once do not share a temp file either.
fn temp_name(name: &str, pid: u32) -> String {
    static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!(".{name}.{n}.{pid}.tmp")
}

/// The writer's PID in a name [`temp_name`] made.
fn temp_name_pid(file_name: &str) -> Option<u32> {
    let inner = file_name.strip_prefix('.')?.strip_suffix(".tmp")?;
    let (name, pid) = inner.rsplit_once('.')?;
    (!name.is_empty()).then_some(())?;
    pid.parse().ok()
}

/// Removes the temp files of [`write_atomically`] in `dir` whose writer no longer runs: a
/// process killed between create and rename leaves one, nothing ever reads it, and no later
/// write reuses its name. A running writer's file is kept, so this is safe while another
/// process writes into `dir`. Returns what it removed; a missing `dir` has nothing.
pub fn remove_interrupted_writes(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(dir)(e)),
    };
    let mut removed = Vec::new();
    for entry in entries {
        let path = entry.map_err(Error::io(dir))?.path();
        let Some(pid) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(temp_name_pid)
        else {
            continue;
        };
        if !process_may_run(pid) && path.is_file() {
            std::fs::remove_file(&path).map_err(Error::io(&path))?;
            removed.push(path);
        }
    }
    Ok(removed)
}

/// False only when `pid` surely runs no process: where there is no `/proc` to ask, every
/// writer is taken for alive and nothing is removed.
fn process_may_run(pid: u32) -> bool {
    let proc = Path::new("/proc");
    pid == std::process::id() || !proc.join("self").exists() || proc.join(pid.to_string()).exists()
}

/// Current UTC time as `xsd:dateTime` (`YYYY-MM-DDThh:mm:ssZ`).
fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes `bytes` at `path`, making its directories.
    fn write(path: PathBuf, bytes: &[u8]) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }

    fn torrent_of(src: &Path) -> Metainfo {
        pow_metainfo::create::create(src, &pow_metainfo::create::CreateOptions::default())
            .unwrap()
            .metainfo
    }

    /// Keys that were one path component as they were keep their name; keys that had to be
    /// changed into one get the IRI's digest too, so no two keys share a directory.
    #[test]
    fn default_directory_names_are_the_key_or_unique() {
        let class = crate::schema::Class::by_name("LocalFileDataSource").unwrap();
        let iri = |key: &str| class.instance_iri(key);
        assert_eq!(default_dir_name(&iri("nuclei")), "nuclei");
        assert_eq!(default_dir_name(&iri("a_b")), "a_b");
        assert_eq!(default_dir_name(&iri("_.x")), "_.x");
        let names: Vec<String> = ["a/b", "a\\b", "a_b", ".x", "_.x", "..", "a/b/"]
            .iter()
            .map(|key| default_dir_name(&iri(key)))
            .collect();
        let distinct: std::collections::HashSet<&String> = names.iter().collect();
        assert_eq!(distinct.len(), names.len(), "{names:?}");
        for name in &names {
            assert!(
                !name.contains(['/', '\\']) && !name.starts_with('.'),
                "{name}"
            );
        }
        assert!(names[0].starts_with("a_b-") && names[0].len() == "a_b-".len() + 16);
        let elsewhere = default_dir_name("urn:example:x/y");
        assert!(elsewhere.len() == 16 && elsewhere.bytes().all(|b| b.is_ascii_hexdigit()));
    }

    /// A plan of a torrent of the directory `src` that replaces other content loaded in
    /// `base`, of the torrent `replaced` if known.
    fn update_plan(base: &Path, src: &Path, replaced: Option<Metainfo>) -> LoadPlan {
        LoadPlan {
            id: "LocalFileDataSource:set".into(),
            iri: "http://openworm.org/entities/LocalFileDataSource/set".into(),
            torrent_file_name: "0123456789abcdef0123456789abcdef.torrent".into(),
            torrent_path: PathBuf::new(),
            torrent_from: "cache".into(),
            metainfo: Arc::new(torrent_of(src)),
            base_dir: base.to_path_buf(),
            md5_field: vec![],
            sha256_field: vec![],
            info_hash_field: vec![],
            file_names: vec![],
            replaces: Some("00".repeat(20)),
            replaced: replaced.map(Arc::new),
        }
    }

    /// Runs `work` on a thread of its own without the capabilities that let root write a file
    /// of any mode (capabilities are per thread), as anyone else runs it.
    fn as_anyone<T: Send>(work: impl FnOnce() -> T + Send) -> T {
        #[repr(C)]
        struct Header {
            version: u32,
            pid: i32,
        }
        #[repr(C)]
        #[derive(Clone, Copy)]
        struct Data {
            effective: u32,
            permitted: u32,
            inheritable: u32,
        }
        const VERSION_3: u32 = 0x2008_0522;
        const DAC_OVERRIDE_AND_READ_SEARCH: u32 = (1 << 1) | (1 << 2);
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let mut header = Header {
                        version: VERSION_3,
                        pid: 0,
                    };
                    let mut data = [Data {
                        effective: 0,
                        permitted: 0,
                        inheritable: 0,
                    }; 2];
                    // SAFETY: capget and capset read and write the header and two data
                    // records given, as the kernel's version 3 layout has them.
                    unsafe {
                        assert_eq!(
                            libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()),
                            0
                        );
                        data[0].effective &= !DAC_OVERRIDE_AND_READ_SEARCH;
                        assert_eq!(
                            libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()),
                            0
                        );
                    }
                    work()
                })
                .join()
                .unwrap()
        })
    }

    /// A copy of an unchanged read-only file, stopped midway, leaves its temp file with the
    /// original's mode; the rerun makes it again. It opened the leftover to write, and every
    /// rerun failed ("Permission denied", naming the new file).
    #[test]
    fn a_stopped_copy_of_a_read_only_file_does_not_block_the_rerun() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("pow-update-ro-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        write(dir.join("src/set/a"), b"unchanged a");
        write(dir.join("src/set/c"), b"new file c");
        let base = dir.join("base");
        write(base.join("set/a"), b"unchanged a");
        let read_only = std::fs::Permissions::from_mode(0o444);
        std::fs::set_permissions(base.join("set/a"), read_only.clone()).unwrap();
        write(base.join("set/b"), b"old file b");
        let earlier = torrent_of(&base.join("set"));
        let plan = update_plan(&base, &dir.join("src/set"), Some(earlier));
        let staged = plan.staged().unwrap();
        let leftover = staged.base_dir.join("set/.pow-copy-a");
        write(leftover.clone(), b"unch");
        std::fs::set_permissions(&leftover, read_only).unwrap();
        let reused = as_anyone(|| plan.reuse_unchanged_files(&staged));
        assert_eq!(reused.unwrap(), 11);
        assert_eq!(
            std::fs::read(staged.base_dir.join("set/a")).unwrap(),
            b"unchanged a"
        );
        assert!(!leftover.exists());
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// A directory's update: the files it keeps unchanged are copied beside it (a read-only
    /// one made writable) and its empty file made, and once the new version is in the update
    /// directory, it takes the old one's place whole (the old moved aside, then removed), also
    /// after a stop between the two renames.
    #[test]
    fn a_directory_update_is_put_in_place_whole_and_again_after_a_stop_between_renames() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("pow-update-dir-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        write(dir.join("src/set/a"), b"unchanged a");
        write(dir.join("src/set/c"), b"new file c");
        write(dir.join("src/set/empty"), b"");
        let base = dir.join("base");
        write(base.join("set/a"), b"unchanged a");
        std::fs::set_permissions(base.join("set/a"), std::fs::Permissions::from_mode(0o444))
            .unwrap();
        write(base.join("set/b"), b"old file b");
        let earlier = torrent_of(&base.join("set"));
        // Not the earlier content's: the user's, and another source's with its resume file
        // (loaded with a --base-dir inside this one).
        let others = ["notes.txt", "more/x", "c.zip", ".pow-resume-ff"];
        for name in others {
            write(base.join("set").join(name), name.as_bytes());
        }
        let earlier_resume = pow_storage::resume::resume_file_in(&base, &"00".repeat(20));
        write(earlier_resume.clone(), b"stale");
        let plan = update_plan(&base, &dir.join("src/set"), Some(earlier));
        let staged = plan.staged().unwrap();
        assert!(staged.base_dir.starts_with(&base));

        assert_eq!(plan.reuse_unchanged_files(&staged).unwrap(), 11);
        let copy = staged.base_dir.join("set/a");
        assert_eq!(std::fs::read(&copy).unwrap(), b"unchanged a");
        let mode = std::fs::metadata(&copy).unwrap().permissions().mode();
        assert_eq!(
            mode & 0o200,
            0o200,
            "writable: a piece may straddle into it"
        );
        assert_eq!(
            std::fs::read(staged.base_dir.join("set/empty")).unwrap(),
            b""
        );
        // The download's part: c.
        write(staged.base_dir.join("set/c"), b"new file c");
        let again = plan.reuse_unchanged_files(&staged).unwrap();
        assert_eq!(again, 0, "already there");

        // The earlier version in place again, with the others' entries.
        let earlier_in_place = || {
            let _ = std::fs::remove_dir_all(base.join("set"));
            write(base.join("set/a"), b"unchanged a");
            write(base.join("set/b"), b"old file b");
            for name in others {
                write(base.join("set").join(name), name.as_bytes());
            }
        };
        let new_in_update_dir = || {
            write(staged.base_dir.join("set/a"), b"unchanged a");
            write(staged.base_dir.join("set/c"), b"new file c");
            write(staged.base_dir.join("set/empty"), b"");
        };
        // The new version is in place with every other entry, and the rest is gone.
        let updated = |plan: &LoadPlan| {
            let left = plan.install_update(&staged).unwrap();
            assert!(left.is_empty(), "{left:?}");
            assert!(plan.remove_update(&staged).unwrap());
            let mut names: Vec<_> = std::fs::read_dir(base.join("set"))
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            names.sort();
            assert_eq!(
                names,
                [
                    ".pow-resume-ff",
                    "a",
                    "c",
                    "c.zip",
                    "empty",
                    "more",
                    "notes.txt"
                ]
            );
            for name in others {
                assert_eq!(
                    std::fs::read(base.join("set").join(name)).unwrap(),
                    name.as_bytes()
                );
            }
            assert_eq!(std::fs::read(base.join("set/c")).unwrap(), b"new file c");
            assert!(!staged.base_dir.exists());
            let left: Vec<_> = std::fs::read_dir(&base).unwrap().collect();
            assert_eq!(left.len(), 1, "only the content is left: {left:?}");
        };

        // Stopped after the old version was moved aside (the update directory marked), before
        // the new took its place.
        std::fs::write(staged.base_dir.join(MOVING), b"").unwrap();
        std::fs::rename(base.join("set"), staged.base_dir.join(".pow-replaced")).unwrap();
        updated(&plan);
        assert!(!earlier_resume.exists());

        // A whole update, from the earlier version in place.
        earlier_in_place();
        new_in_update_dir();
        plan.install_update(&staged).unwrap();
        assert!(
            staged.base_dir.join(".pow-replaced/b").exists(),
            "moved aside"
        );
        assert!(!staged.base_dir.join(MOVING).exists(), "all moved");
        assert!(plan.remove_update(&staged).unwrap());

        // Stopped after both renames, before the others' entries were moved back: the next
        // install moves them.
        earlier_in_place();
        new_in_update_dir();
        std::fs::write(staged.base_dir.join(MOVING), b"").unwrap();
        std::fs::rename(base.join("set"), staged.base_dir.join(".pow-replaced")).unwrap();
        std::fs::rename(staged.base_dir.join("set"), base.join("set")).unwrap();
        // Nothing else removes the update directory meanwhile: it still holds their files.
        assert!(!plan.remove_update(&staged).unwrap());
        std::fs::write(staged.base_dir.join(UPDATE_OWNER), &plan.iri).unwrap();
        let (removed, kept) = plan.remove_abandoned_updates().unwrap();
        assert_eq!((removed, kept), (vec![], vec![staged.base_dir.clone()]));
        updated(&plan);

        // Without the earlier torrent, a file it alone had is kept too (it may not be its).
        let unknown = update_plan(&base, &dir.join("src/set"), None);
        earlier_in_place();
        new_in_update_dir();
        unknown.install_update(&staged).unwrap();
        unknown.remove_update(&staged).unwrap();
        assert_eq!(std::fs::read(base.join("set/b")).unwrap(), b"old file b");
        assert_eq!(std::fs::read(base.join("set/c")).unwrap(), b"new file c");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Where the new version has a file at the path of an entry that is not the earlier
    /// torrent's (a directory of it now a file, holding the user's file; the user's file of
    /// the same name), the update is refused before anything moves.
    #[test]
    fn an_update_that_would_take_the_place_of_others_files_is_refused() {
        let dir = std::env::temp_dir().join(format!("pow-update-way-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        write(dir.join("base/set/docs/x"), b"old x");
        let earlier = torrent_of(&dir.join("base/set"));
        write(dir.join("src/set/docs"), b"docs is a file now");
        write(dir.join("src/set/notes.txt"), b"the new version's notes");
        let plan = update_plan(&dir.join("base"), &dir.join("src/set"), Some(earlier));
        let staged = plan.staged().unwrap();
        write(staged.base_dir.join("set/docs"), b"docs is a file now");
        write(
            staged.base_dir.join("set/notes.txt"),
            b"the new version's notes",
        );
        for mine in ["docs/mine.txt", "notes.txt"] {
            write(dir.join("base/set").join(mine), b"mine");
            let refused = plan.install_update(&staged).unwrap_err().to_string();
            assert!(refused.contains(mine), "{refused}");
            assert_eq!(
                std::fs::read(dir.join("base/set").join(mine)).unwrap(),
                b"mine"
            );
            assert_eq!(
                std::fs::read(dir.join("base/set/docs/x")).unwrap(),
                b"old x"
            );
            std::fs::remove_file(dir.join("base/set").join(mine)).unwrap();
        }
        // Once they are moved away, the update goes through.
        assert!(plan.install_update(&staged).unwrap().is_empty());
        assert!(plan.remove_update(&staged).unwrap());
        assert_eq!(
            std::fs::read(dir.join("base/set/docs")).unwrap(),
            b"docs is a file now"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A `file_name` counts when the torrent delivers it, by its path in the torrent or below
    /// the content's root; a file of that name that the base directory holds otherwise does
    /// not (it passed before).
    #[test]
    fn a_file_name_is_one_of_the_torrents_files() {
        let dir = std::env::temp_dir().join(format!("pow-file-name-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for file in ["src/set/a", "src/set/sub/x", "base/README.md", "base/set/a"] {
            write(dir.join(file), file.as_bytes());
        }
        let mut plan = update_plan(&dir.join("base"), &dir.join("src/set"), None);
        let outcome = |plan: &mut LoadPlan, names: &[&str]| {
            plan.file_names = names.iter().map(|n| n.to_string()).collect();
            let check = plan.check_file_names();
            (check.outcome, check.detail)
        };
        for delivered in ["a", "set/a", "sub/x", "set/sub/x"] {
            let (outcome, detail) = outcome(&mut plan, &[delivered]);
            assert_eq!(outcome, Outcome::Passed, "{delivered}: {detail}");
        }
        for other in ["README.md", "x", "set", "sub", "../base/README.md"] {
            let (outcome, detail) = outcome(&mut plan, &[other]);
            assert_eq!(outcome, Outcome::Failed, "{other}: {detail}");
            assert!(detail.contains(other), "{detail}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A directory replaced by a file cannot keep what it held besides its torrent's files:
    /// the update is refused before anything moves.
    #[test]
    fn a_directory_holding_others_files_is_not_replaced_by_a_file() {
        let dir = std::env::temp_dir().join(format!("pow-update-kind-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        write(dir.join("base/set/a"), b"old a");
        let earlier = torrent_of(&dir.join("base/set"));
        write(dir.join("base/set/notes.txt"), b"mine");
        write(dir.join("src/set"), b"now one file");
        let plan = update_plan(&dir.join("base"), &dir.join("src/set"), Some(earlier));
        let staged = plan.staged().unwrap();
        write(staged.base_dir.join("set"), b"now one file");
        let refused = plan.install_update(&staged).unwrap_err().to_string();
        assert!(refused.contains("notes.txt"), "{refused}");
        assert_eq!(
            std::fs::read(dir.join("base/set/notes.txt")).unwrap(),
            b"mine"
        );
        assert_eq!(std::fs::read(dir.join("base/set/a")).unwrap(), b"old a");
        // Once they are moved away, the file takes the directory's place.
        std::fs::remove_file(dir.join("base/set/notes.txt")).unwrap();
        plan.install_update(&staged).unwrap();
        plan.remove_update(&staged).unwrap();
        assert_eq!(
            std::fs::read(dir.join("base/set")).unwrap(),
            b"now one file"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Contents overlap where one lies inside the other's and they would share a file, or a
    /// file of one is a directory of the other; a file beside the other's is no overlap.
    #[test]
    fn contents_overlap_where_they_share_a_path_not_where_they_only_nest() {
        let work = std::env::temp_dir().join(format!("pow-overlap-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&work);
        let torrent_of = |path: &str, files: &[&str]| -> Metainfo {
            let src = work.join("src").join(path);
            for file in files {
                let file = src.join(file);
                std::fs::create_dir_all(file.parent().unwrap()).unwrap();
                std::fs::write(&file, file.display().to_string()).unwrap();
            }
            if files.is_empty() {
                std::fs::create_dir_all(src.parent().unwrap()).unwrap();
                std::fs::write(&src, path).unwrap();
            }
            let options = pow_metainfo::create::CreateOptions::default();
            pow_metainfo::create::create(&src, &options)
                .unwrap()
                .metainfo
        };
        // A directory `cells` with `a.csv` and `sub/b.csv`, loaded into /base.
        let cells = torrent_of("1/cells", &["a.csv", "sub/b.csv"]);
        let a_csv = torrent_of("2/a.csv", &[]);
        let c_csv = torrent_of("3/c.csv", &[]);
        let sub = torrent_of("4/sub", &[]);
        let cells_root = Path::new("/base/cells");
        let root = |dir: &str, m: &Metainfo| Path::new(dir).join(&m.name);
        let at = |dir: &str, m: &Metainfo| overlap(cells_root, &cells, &root(dir, m), m);
        assert_eq!(at("/base", &cells), Some(PathBuf::from("/base/cells")));
        assert_eq!(at("/base/cells", &a_csv), Some("/base/cells/a.csv".into()));
        assert_eq!(at("/base/cells", &c_csv), None, "beside its files");
        assert_eq!(at("/base/cells", &sub), Some("/base/cells/sub".into()));
        assert_eq!(at("/base/cells/sub", &c_csv), None);
        assert_eq!(at("/elsewhere", &a_csv), None);
        assert_eq!(at("/base", &a_csv), None, "a sibling of the directory");
        // The other way round: loaded where the `cells` directory goes, a file of it...
        let other = |dir: &str, m: &Metainfo| overlap(&root(dir, m), m, cells_root, &cells);
        assert_eq!(
            other("/base/cells", &a_csv),
            Some("/base/cells/a.csv".into())
        );
        assert_eq!(other("/base/cells/sub", &c_csv), None);
        // ...and a file where it needs a directory.
        let cells_file = torrent_of("5/cells", &[]);
        assert_eq!(other("/base", &cells_file), Some("/base/cells".into()));
        let sub_file_inside = other("/base/cells", &sub);
        assert_eq!(sub_file_inside, Some("/base/cells/sub".into()));
        std::fs::remove_dir_all(&work).unwrap();
    }

    /// Resolved as far as the path exists (symlinks and `..` by the file system), lexically
    /// past that.
    #[test]
    fn a_path_is_resolved_through_symlinks_and_dot_dots_also_past_what_exists() {
        let work = std::env::temp_dir().join(format!("pow-resolved-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&work);
        std::fs::create_dir_all(work.join("real/cells")).unwrap();
        std::os::unix::fs::symlink(work.join("real"), work.join("link")).unwrap();
        let real = work.join("real").canonicalize().unwrap();
        assert_eq!(resolved(&work.join("link/cells")), real.join("cells"));
        assert_eq!(resolved(&work.join("link/cells/../x")), real.join("x"));
        assert_eq!(
            resolved(&work.join("link/new/../cells/./a")),
            real.join("cells/a")
        );
        assert_eq!(
            resolved(&work.join("link/new/deeper/../../b")),
            real.join("b")
        );
        std::fs::remove_dir_all(&work).unwrap();
    }

    /// The permissions are the temp file's from its creation: a private file replaced by
    /// `pow export -o` is never open to others, not even for a moment. Only the rwx bits are
    /// copied (not setuid).
    #[test]
    fn a_file_written_as_private_is_private_before_it_is_renamed() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("pow-write-as-{}", std::process::id()));
        let private = std::fs::Permissions::from_mode(0o600);
        let mode_at_rename = std::cell::Cell::new(0);
        write_via_temp(
            &dir,
            "export.nq",
            b"<a> <b> <c> .",
            Some(private.clone()),
            |temp, target| {
                mode_at_rename.set(std::fs::metadata(temp)?.permissions().mode() & 0o777);
                std::fs::rename(temp, target).map(|()| true)
            },
        )
        .unwrap();
        assert_eq!(mode_at_rename.get(), 0o600);
        write_atomically_as(&dir, "export.nq", b"<a> <b> <d> .", Some(private)).unwrap();
        let mode = std::fs::metadata(dir.join("export.nq"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);

        // Private from its creation, before a byte is written; setuid is not copied; a link
        // planted at the temp name is replaced, its target untouched.
        let temp = dir.join(".export.nq.0.1.tmp");
        let elsewhere = dir.join("elsewhere");
        std::fs::write(&elsewhere, b"theirs").unwrap();
        std::os::unix::fs::symlink(&elsewhere, &temp).unwrap();
        let file = create_temp(&temp, Some(&std::fs::Permissions::from_mode(0o4600))).unwrap();
        assert_eq!(
            file.metadata().unwrap().permissions().mode() & 0o7777,
            0o600
        );
        assert!(std::fs::symlink_metadata(&temp)
            .unwrap()
            .file_type()
            .is_file());
        assert_eq!(std::fs::read(&elsewhere).unwrap(), b"theirs");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Two writers of one name at once, with other bytes: exactly one writes, the file holds
    /// its bytes, and the other is told so (a check and a rename let both write, round after
    /// round here, and the file held whichever renamed last).
    #[test]
    fn write_new_lets_one_of_two_writers_at_once_write() {
        let dir = std::env::temp_dir().join(format!("pow-write-new-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for round in 0..200 {
            let name = format!("{round}.torrent");
            let start = std::sync::Barrier::new(2);
            let wrote: Vec<bool> = std::thread::scope(|scope| {
                let writers: Vec<_> = [b"first", b"other"]
                    .map(|bytes| {
                        let (dir, name, start) = (&dir, &name, &start);
                        scope.spawn(move || {
                            start.wait();
                            write_new(dir, name, bytes).unwrap()
                        })
                    })
                    .into_iter()
                    .collect();
                writers.into_iter().map(|w| w.join().unwrap()).collect()
            });
            assert_eq!(wrote.iter().filter(|&&w| w).count(), 1, "round {round}");
            let winner: &[u8] = if wrote[0] { b"first" } else { b"other" };
            assert_eq!(std::fs::read(dir.join(&name)).unwrap(), winner);
        }
        let names: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
        assert_eq!(names.len(), 200, "temp files left");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn only_a_dead_writers_temp_files_are_removed() {
        let dir = std::env::temp_dir().join(format!("pow-interrupted-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        write_atomically(&dir, "kept.torrent", b"d4:infod").unwrap();
        // Above Linux's largest pid_max (2^22): no process has it.
        let dead = dir.join(temp_name("x.torrent", 999_999_999));
        let running_init = dir.join(temp_name("x.torrent", 1));
        let this_process = dir.join(temp_name("y.torrent", std::process::id()));
        let no_pid = dir.join(".x.torrent.tmp");
        let other = dir.join(".keep");
        for path in [&dead, &running_init, &this_process, &no_pid, &other] {
            std::fs::write(path, b"").unwrap();
        }
        assert_eq!(remove_interrupted_writes(&dir).unwrap(), vec![dead.clone()]);
        assert!(!dead.exists());
        for path in [&running_init, &this_process, &no_pid, &other] {
            assert!(path.exists(), "{} removed", path.display());
        }
        assert_eq!(
            std::fs::read(dir.join("kept.torrent")).unwrap(),
            b"d4:infod"
        );
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(
            remove_interrupted_writes(&dir).unwrap().is_empty(),
            "a missing dir"
        );
    }

    #[test]
    fn time_format() {
        let now = now_rfc3339();
        assert_eq!(now.len(), 20, "{now}");
        assert!(now.starts_with("20"), "{now}");
        assert!(now.ends_with('Z'));
    }
}
