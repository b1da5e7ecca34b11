//! Data sources in an embedded RDF graph: the `.pow/` project directory (a persistent Oxigraph
//! store, `pow.toml`, `graphs/`), the 2019 PyOpenWorm DataSource classes with their fields,
//! IRIs and `also` rule, definitions files (TOML form and RDF), and the read side that
//! `pow source list|show|query` and `pow export|import` print.
//!
//! This crate knows nothing of BitTorrent: the engine crates do not depend on it, nor it on them.

pub mod config;
pub mod definitions;
pub mod error;
pub mod schema;
pub mod show;
pub mod store;

pub use config::Config;
pub use error::{Error, Result};
pub use schema::{Class, Field, FieldKind};
pub use show::{Shown, ShownField, Value};
pub use store::{ExportFormat, ListEntry, PowDir, QueryOutput, SaveReport};
