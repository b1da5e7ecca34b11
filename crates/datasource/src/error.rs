//! The crate's error type: one variant per thing a user can get wrong, plus wrapped causes.

use std::path::PathBuf;

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No `.pow` directory in the current directory.
    #[error("no .pow directory here; run pow init")]
    NoPowDirHere,
    /// No `.pow` directory at an explicitly given path.
    #[error("no .pow directory at {0}; run pow init")]
    NoPowDir(PathBuf),
    /// Another process kept the graph store open for longer than a command waits.
    #[error("{0}: the project's graph store is in use by another pow process (waited {1} s)")]
    StoreBusy(PathBuf, u64),
    /// `pow init` on an existing `.pow`.
    #[error("{0} already exists")]
    AlreadyInitialised(PathBuf),
    /// A file could not be read or written.
    #[error("{path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// `pow.toml` is malformed.
    #[error("bad config {path}")]
    Config {
        /// The config file.
        path: PathBuf,
        /// Why.
        #[source]
        source: toml::de::Error,
    },
    /// A definitions file is not valid TOML.
    #[error("cannot parse {path}")]
    Toml {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: toml::de::Error,
    },
    /// An RDF file does not parse.
    #[error("cannot parse {path}")]
    Rdf {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: oxigraph::io::RdfParseError,
    },
    /// The file's extension names no supported format.
    #[error("{0}: unknown format; use .toml, .ttl, .trig, .nt or .nq")]
    UnknownFormat(PathBuf),
    /// A definitions file is shaped wrongly (missing `type`, a number where a string goes, ...).
    #[error("{at}: {message}")]
    Definition {
        /// Which source (e.g. `source 2`).
        at: String,
        /// What is wrong.
        message: String,
    },
    /// A class name that is not one of the DataSource classes.
    #[error("{at}: unknown class {name:?}; valid classes: {valid}")]
    UnknownClass {
        /// Which source.
        at: String,
        /// The unknown name.
        name: String,
        /// The known class names.
        valid: String,
    },
    /// A field that the class does not have.
    #[error("{at}: unknown field {field:?} for {class}; valid fields: {valid}")]
    UnknownField {
        /// Which source.
        at: String,
        /// The class.
        class: String,
        /// The unknown field.
        field: String,
        /// The class's fields.
        valid: String,
    },
    /// A `torrent_file_name` not of the form `<32 hex digits>.torrent`.
    #[error("{at}: bad torrent_file_name {value:?}: expected <32 hex digits of the MD5>.torrent")]
    BadTorrentFileName {
        /// Which source.
        at: String,
        /// The bad value.
        value: String,
    },
    /// A hash field that is not hex of the right length.
    #[error("{at}: bad {field} {value:?}: expected {digits} hex digits")]
    BadHash {
        /// Which source.
        at: String,
        /// md5, sha256, sha512 or info_hash.
        field: String,
        /// The bad value.
        value: String,
        /// Expected number of hex digits.
        digits: usize,
    },
    /// Two different values for one field through its `also` rule.
    #[error("{at}: conflicting values for {target}: {from} gives {from_value:?} but {target} is {target_value:?}")]
    ConflictingAlso {
        /// Which source.
        at: String,
        /// The field that passes its value on (csv_file_name).
        from: String,
        /// The field receiving it (file_name).
        target: String,
        /// Value(s) of `from`.
        from_value: String,
        /// Value(s) of `target`.
        target_value: String,
    },
    /// An ID that resolves to nothing stored.
    #[error("unknown data source {0}")]
    UnknownId(String),
    /// An ID that exists but is not an instance of a known DataSource class.
    #[error("{0} is not a DataSource")]
    NotADataSource(String),
    /// A `--kind` that is not a known class.
    #[error("unknown kind {name:?}; valid kinds: {valid}")]
    UnknownKind {
        /// The name given.
        name: String,
        /// The known class names.
        valid: String,
    },
    /// A torrent store is unreachable or misbehaves.
    #[error("torrent store {store}: {message}")]
    Store {
        /// The store (directory or URL).
        store: String,
        /// What went wrong.
        message: String,
    },
    /// The store answered but does not hold the torrent.
    #[error("torrent store {store} has no {name}")]
    TorrentNotInStore {
        /// The store (directory or URL).
        store: String,
        /// The torrent file name.
        name: String,
    },
    /// A data source that the BitTorrent loader cannot load.
    #[error("cannot load {id}: {why}")]
    NotLoadable {
        /// `Type:key`.
        id: String,
        /// Why not.
        why: String,
    },
    /// The Oxigraph store failed.
    #[error("store")]
    Storage(#[from] oxigraph::store::StorageError),
    /// A SPARQL query does not parse.
    #[error("bad SPARQL")]
    Syntax(#[from] oxigraph::sparql::SparqlSyntaxError),
    /// A SPARQL query failed.
    #[error("query failed")]
    Query(#[from] oxigraph::sparql::QueryEvaluationError),
}

/// This crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The torrent store could not give the torrent (down, misbehaving, or without it): a
    /// torrent named by info-hash can still come from peers.
    pub fn store_failed(&self) -> bool {
        matches!(self, Error::Store { .. } | Error::TorrentNotInStore { .. })
    }

    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { path, source }
    }
}
