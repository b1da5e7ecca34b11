//! Data sources in an embedded RDF graph: the `.pow/` project directory (a persistent Oxigraph
//! store, `pow.toml`, `graphs/`), the 2019 PyOpenWorm DataSource classes with their fields,
//! IRIs and `also` rule, definitions files (TOML form and RDF), and the read side that
//! `pow source list|show|query` and `pow export|import` print.
//!
//! It also holds the graph and file side of the BitTorrent loader: torrent stores
//! ([`torrent_store`]), the content integrity rule ([`integrity`]) and load planning and
//! recording ([`loader`]). It knows no sockets: the `pow` binary runs the engine between
//! planning a load and checking it. The engine crates do not depend on this one.

pub mod config;
pub mod definitions;
pub mod error;
pub mod integrity;
pub mod loader;
pub mod publish;
pub mod schema;
pub mod show;
pub mod store;
pub mod torrent_store;

pub use config::Config;
pub use error::{Error, Result};
pub use loader::{FetchedTorrent, LoadPlan, LoadRecord, SourceTorrent, TorrentWanted};
pub use schema::{Class, Field, FieldKind};
pub use show::{Shown, ShownField, Value};
pub use store::{ExportFormat, ListEntry, PowDir, QueryOutput, SaveReport};
pub use torrent_store::TorrentStore;
