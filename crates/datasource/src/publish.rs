//! The graph and store side of `pow publish`: put `<md5>.torrent` into a directory torrent
//! store without ever exposing half a file, and add or update the data source that names it.
//! Publishing the same bytes twice changes nothing.

use crate::definitions::{check, parse_toml};
use crate::error::Result;
use crate::loader::{remove_interrupted_writes, write_new};
use crate::schema::schema_quads;
use crate::store::{replaced_values, PowDir};
use crate::torrent_store::{check_file_name, TorrentStore};
use oxigraph::model::vocab::rdf;
use oxigraph::model::NamedNode;
use std::path::Path;

/// What happened to the torrent in the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Stored {
    /// Written now.
    Written,
    /// The store already had this name: the content MD5 is the same, so it is kept as it is
    /// (its info-hash may differ if it was made with other options; the name is what counts).
    Existing,
}

/// Puts `name` into the store unless it is already there: a directory store by temp file,
/// fsync and rename; an HTTP store (`pow serve`) by `PUT` with the server's token.
pub fn store_torrent(
    store: &TorrentStore,
    name: &str,
    bytes: &[u8],
    token: Option<&str>,
) -> Result<Stored> {
    check_file_name(name)?;
    match store {
        TorrentStore::Dir(dir) => {
            if dir.join(name).is_file() {
                return Ok(Stored::Existing);
            }
            remove_interrupted_writes(dir)?;
            // Two publishes of the same bytes at once (with other options: other bytes of
            // torrent) both get here; one writes, the other finds its torrent and uses it.
            Ok(match write_new(dir, name, bytes)? {
                true => Stored::Written,
                false => Stored::Existing,
            })
        }
        TorrentStore::Http(_) => Ok(if store.http_put(name, bytes, token)? {
            Stored::Written
        } else {
            Stored::Existing
        }),
    }
}

impl PowDir {
    /// Adds data source `class_name:key`, or updates it: each field given replaces the values
    /// that field had; other fields are kept. One transaction; validated like `pow save`.
    /// Returns the source's IRI.
    pub fn upsert_source(
        &self,
        class_name: &str,
        key: &str,
        fields: &[(String, String)],
    ) -> Result<String> {
        let (quads, subject) = self.source_quads(class_name, key, fields)?;
        let data_graph = self.config().data_graph.clone();
        let graph = NamedNode::new_unchecked(&data_graph);
        let mut txn = self.store().start_transaction()?;
        for old in replaced_values(&txn, &quads, &graph)? {
            txn.remove(&old);
        }
        txn.extend(&schema_quads(&data_graph));
        txn.extend(&quads);
        txn.commit()?;
        Ok(match subject {
            oxigraph::model::NamedOrBlankNode::NamedNode(n) => n.into_string(),
            other => other.to_string(),
        })
    }

    /// What [`PowDir::upsert_source`] would refuse of these fields (an unknown class or field,
    /// a malformed value, conflicting `also` values), without writing anything: `pow publish`
    /// asks before it hashes the content and stores its torrent.
    pub fn check_source(
        &self,
        class_name: &str,
        key: &str,
        fields: &[(String, String)],
    ) -> Result<()> {
        self.source_quads(class_name, key, fields).map(drop)
    }

    /// The checked statements of one source, and its subject.
    fn source_quads(
        &self,
        class_name: &str,
        key: &str,
        fields: &[(String, String)],
    ) -> Result<(
        Vec<oxigraph::model::Quad>,
        oxigraph::model::NamedOrBlankNode,
    )> {
        let mut table = toml::Table::new();
        table.insert("type".into(), class_name.into());
        table.insert("key".into(), key.into());
        for (name, value) in fields {
            table.insert(name.clone(), value.as_str().into());
        }
        let mut root = toml::Table::new();
        root.insert(
            "source".into(),
            toml::Value::Array(vec![toml::Value::Table(table)]),
        );
        let text = toml::to_string(&root).expect("TOML serialises");
        let data_graph = self.config().data_graph.clone();
        let mut quads = parse_toml(Path::new("<publish>"), &text, &data_graph)?;
        check(&mut quads, &data_graph, true, &Default::default())?;
        let subject = quads
            .iter()
            .find(|q| q.predicate.as_ref() == rdf::TYPE)
            .map(|q| q.subject.clone())
            .expect("a source has a type");
        Ok((quads, subject))
    }
}
