//! The `.pow` directory: the persistent Oxigraph store plus `pow.toml`, and the operations on
//! it (init, save, import, list, kinds, show, derivs, query, export).

use crate::config::{Config, CONFIG_FILE};
use crate::definitions::{check, parse_rdf, parse_toml_fields, Cleared, FileFormat};
use crate::error::{Error, Result};
use crate::schema::{resolve_id, schema_quads, shorten, Class, ENTITIES, SCHEMA_GRAPH};
use crate::show::{Shown, ShownField, Value};
use oxigraph::io::{RdfFormat, RdfSerializer};
use oxigraph::model::vocab::{rdf, rdfs};
use oxigraph::model::{
    GraphNameRef, NamedNode, NamedNodeRef, NamedOrBlankNode, NamedOrBlankNodeRef, Quad, Term,
};
use oxigraph::sparql::results::{QueryResultsFormat, QueryResultsSerializer};
use oxigraph::sparql::{QueryResults, QuerySolutionIter, SparqlEvaluator};
use oxigraph::store::Store;
use serde::Serialize;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

/// Directory of the Oxigraph (RocksDB) store inside `.pow/`.
pub const STORE_DIR: &str = "store";
/// Directory for git-friendly graph exports inside `.pow/`.
pub const GRAPHS_DIR: &str = "graphs";

/// An opened `.pow` directory.
pub struct PowDir {
    dir: PathBuf,
    config: Config,
    store: Store,
}

/// What a save or import wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SaveReport {
    /// Quads in the input after the `also` rule (some may have been stored already).
    pub quads: usize,
    /// DataSource instances among them.
    pub sources: usize,
}

/// One row of `source kinds`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KindEntry {
    /// The class name (as `--kind` and `type =` take it), or the IRI of a class pow does not
    /// know (one an imported schema added).
    pub name: String,
    pub iri: String,
}

/// A data source and, recursively, those derived from it (`source derivs`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Derivation {
    /// `Type:key` form, the IRI, or `_:label` for a blank node.
    pub id: String,
    pub iri: String,
    /// The data sources whose `source` field names this one, sorted by ID; empty where
    /// `repeated` or `cut`.
    pub derived: Vec<Derivation>,
    /// Shown with what derives from it further up (a second parent, or a cycle).
    pub repeated: bool,
    /// At [`MAX_DERIVATION_DEPTH`]: what derives from it is not shown.
    pub cut: bool,
}

/// Levels of a derivation tree shown (the walk and its printing recurse).
pub const MAX_DERIVATION_DEPTH: usize = 256;

impl Derivation {
    /// The tree as text: the ID, then each derived source 4 spaces further in; one shown
    /// further up says so.
    pub fn format(&self) -> String {
        let mut out = String::new();
        self.format_at(0, &mut out);
        out
    }

    fn format_at(&self, depth: usize, out: &mut String) {
        out.push_str(&" ".repeat(4 * depth));
        out.push_str(&self.id);
        if self.repeated {
            out.push_str(" (see above)");
        }
        if self.cut {
            out.push_str(" (deeper levels not shown)");
        }
        out.push('\n');
        for d in &self.derived {
            d.format_at(depth + 1, out);
        }
    }
}

/// One row of `source list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ListEntry {
    /// `Type:key` form, or the IRI if it has none.
    pub id: String,
    /// Full IRI.
    pub iri: String,
    /// `rdfs:comment`, if any.
    pub comment: Option<String>,
}

/// Syntax of `pow export`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    /// One sorted N-Quads line per quad.
    NQuads,
    /// TriG (Turtle with graph blocks), sorted, with class-name prefixes.
    Turtle,
}

/// How `query` prints its results.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueryOutput {
    /// SELECT: TSV with a header row; ASK: `true`/`false`; CONSTRUCT: sorted N-Triples.
    Table,
    /// SELECT/ASK: SPARQL JSON results; CONSTRUCT: a JSON array of N-Triples lines.
    Json,
}

/// How a class is named to users: by its name in the 2019 entities namespace (pow's classes,
/// and an imported schema's there, `NeuronCSVDataSource`), else by its IRI.
fn kind_name(class_iri: &str) -> String {
    match class_iri.strip_prefix(ENTITIES) {
        Some(name) if !name.is_empty() && !name.contains(['/', '#']) => name.to_string(),
        _ => class_iri.to_string(),
    }
}

/// How long opening the graph store waits for another process to let go of it.
const STORE_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// Opens the graph store, waiting while another `pow` process has it open: RocksDB lets one
/// process at a time open it, and commands hold it for short spells (a save, a load's plan
/// and record), so jobs started together (a cluster array loading its data sources) take
/// turns instead of failing with "While lock file: ... Resource temporarily unavailable".
fn open_store(path: &Path) -> Result<Store> {
    let started = std::time::Instant::now();
    loop {
        match Store::open(path) {
            // EAGAIN: held by another process (not a file system without locks).
            Err(e) if e.to_string().contains("Resource temporarily unavailable") => {
                if started.elapsed() >= STORE_WAIT {
                    return Err(Error::StoreBusy(path.to_path_buf(), STORE_WAIT.as_secs()));
                }
                let jitter = rand_millis(20, 100);
                std::thread::sleep(std::time::Duration::from_millis(jitter));
            }
            opened => return Ok(opened?),
        }
    }
}

/// A number of milliseconds in `low..high`, drawn from the clock (no generator needed for
/// spreading retries apart).
fn rand_millis(low: u64, high: u64) -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    low + u64::from(nanos) % (high - low)
}

impl PowDir {
    /// Creates a `.pow` directory: `pow.toml`, the store (with the schema graph) and `graphs/`.
    pub fn init(dir: &Path) -> Result<PowDir> {
        // `pow.toml`, written last, says it is initialised: a store without it is what an
        // init killed midway left, and is taken up again (the schema quads are a set).
        if dir.join(CONFIG_FILE).exists() {
            return Err(Error::AlreadyInitialised(dir.to_path_buf()));
        }
        let config = Config::default();
        for sub in [
            GRAPHS_DIR,
            config.torrent_store.as_str(),
            config.download_dir.as_str(),
        ] {
            let path = dir.join(sub);
            std::fs::create_dir_all(&path).map_err(Error::io(path))?;
        }
        let store = open_store(&dir.join(STORE_DIR))?;
        // Another init may have finished while this one waited for the store.
        if dir.join(CONFIG_FILE).exists() {
            return Err(Error::AlreadyInitialised(dir.to_path_buf()));
        }
        let mut txn = store.start_transaction()?;
        txn.extend(&schema_quads(&config.data_graph));
        txn.commit()?;
        config.write(dir)?;
        Ok(PowDir {
            dir: dir.to_path_buf(),
            config,
            store,
        })
    }

    /// Opens an existing `.pow` directory. `explicit` says whether the path was given
    /// (`--pow-dir`/`POW_DIR`), which only changes the error message.
    pub fn open(dir: &Path, explicit: bool) -> Result<PowDir> {
        if !dir.join(CONFIG_FILE).is_file() {
            return Err(if explicit {
                Error::NoPowDir(dir.to_path_buf())
            } else {
                Error::NoPowDirHere
            });
        }
        let config = Config::load(dir)?;
        let store = open_store(&dir.join(STORE_DIR))?;
        Ok(PowDir {
            dir: dir.to_path_buf(),
            config,
            store,
        })
    }

    /// The `.pow` directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The loaded `pow.toml`.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The underlying Oxigraph store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Number of quads in the store.
    pub fn len(&self) -> Result<usize> {
        Ok(self.store.len()?)
    }

    /// Whether the store holds no quads.
    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.store.is_empty()?)
    }

    /// `pow save FILE`: reads a TOML or RDF definitions file, validates it, then writes it in
    /// one transaction. On any error nothing is written. A TOML definition is the source's
    /// state for the fields it gives: their stored values are replaced (as `pow publish` does),
    /// the other fields kept. An RDF file is merged, statements added to those stored, as RDF
    /// tools (and `pow import`) do.
    /// A field given as an empty list (`info_hash = []`) has its stored values removed.
    pub fn save_file(&self, path: &Path) -> Result<SaveReport> {
        let (quads, cleared) = self.read_definition_fields(path)?;
        let replace = matches!(FileFormat::from_path(path)?, FileFormat::Toml);
        self.write_all(quads, replace, &cleared)
    }

    /// Reads and validates a definitions file without writing anything.
    pub fn read_definitions(&self, path: &Path) -> Result<Vec<Quad>> {
        Ok(self.read_definition_fields(path)?.0)
    }

    /// As [`PowDir::read_definitions`], and the fields a TOML file gives as empty lists.
    fn read_definition_fields(&self, path: &Path) -> Result<(Vec<Quad>, Vec<Cleared>)> {
        let format = FileFormat::from_path(path)?;
        let bytes = std::fs::read(path).map_err(Error::io(path))?;
        let data_graph = &self.config.data_graph;
        let (mut quads, cleared) = match format {
            FileFormat::Toml => {
                let text = String::from_utf8(bytes).map_err(|e| Error::Definition {
                    at: path.display().to_string(),
                    message: format!("not UTF-8: {e}"),
                })?;
                parse_toml_fields(path, &text, data_graph)?
            }
            FileFormat::Rdf(format) => (
                parse_rdf(path, &bytes, format, data_graph, true)?,
                Vec::new(),
            ),
        };
        self.add_stored_types(&mut quads)?;
        let imported = self.imported_kinds(&quads)?;
        check(&mut quads, data_graph, true, &imported)?;
        Ok((quads, cleared))
    }

    /// Adds to `quads` the stored `rdf:type`s of the subjects they give fields of in the data
    /// graph without a type of their own, so that [`check`] knows what they are (written again,
    /// the stored statements change nothing). An RDF file that gave a stored source fields and no
    /// type was checked as nothing: `md5 "not-a-hash"` and unknown fields were saved. A subject
    /// with data-source fields that is neither typed there nor stored is refused.
    fn add_stored_types(&self, quads: &mut Vec<Quad>) -> Result<()> {
        let graph = self.data_graph();
        let in_graph = |q: &Quad| matches!(&q.graph_name, oxigraph::model::GraphName::NamedNode(g) if *g == graph);
        let typed: std::collections::HashSet<_> = quads
            .iter()
            .filter(|q| in_graph(q) && q.predicate.as_ref() == rdf::TYPE)
            .map(|q| q.subject.clone())
            .collect();
        // Data-source fields only (their predicates), not anything else under the entities
        // namespace (OpenWorm's own statements, typed elsewhere, pass as before).
        let fields: std::collections::HashSet<String> = crate::schema::CLASSES
            .iter()
            .flat_map(|class| class.fields())
            .map(|field| field.predicate())
            .collect();
        let mut untyped: Vec<_> = quads
            .iter()
            .filter(|q| in_graph(q) && !typed.contains(&q.subject))
            .filter(|q| fields.contains(q.predicate.as_str()))
            .map(|q| q.subject.clone())
            .collect();
        untyped.sort_by_key(|s| s.to_string());
        untyped.dedup();
        for subject in untyped {
            let stored = self
                .store
                .quads_for_pattern(
                    Some(subject.as_ref()),
                    Some(rdf::TYPE),
                    None,
                    Some(GraphNameRef::NamedNode(graph.as_ref())),
                )
                .collect::<std::result::Result<Vec<_>, _>>()?;
            if stored.is_empty() {
                return Err(Error::Definition {
                    at: subject.to_string(),
                    message: "data-source fields of something that is no data source here: \
                              give its rdf:type, or save the source first"
                        .into(),
                });
            }
            quads.extend(stored);
        }
        Ok(())
    }

    /// `pow import FILE`: loads an RDF file (typically a `pow export`) as is, blank node labels
    /// included, after the same checks as `save` but without adding anything. One transaction.
    pub fn import_file(&self, path: &Path) -> Result<SaveReport> {
        let format = match FileFormat::from_path(path)? {
            FileFormat::Rdf(format) => format,
            FileFormat::Toml => return Err(Error::UnknownFormat(path.to_path_buf())),
        };
        let bytes = std::fs::read(path).map_err(Error::io(path))?;
        let mut quads = parse_rdf(path, &bytes, format, &self.config.data_graph, false)?;
        self.add_stored_types(&mut quads)?;
        let imported = self.imported_kinds(&quads)?;
        check(&mut quads, &self.config.data_graph, false, &imported)?;
        self.write_all(quads, false, &[])
    }

    /// Writes `quads` in one transaction; with `replace_fields`, first removes the stored
    /// values of each field they give a source ([`replaced_values`]), and of each field in
    /// `cleared`.
    fn write_all(
        &self,
        quads: Vec<Quad>,
        replace_fields: bool,
        cleared: &[Cleared],
    ) -> Result<SaveReport> {
        // Counted before the write, with the file's own schema: an error after the commit
        // would say nothing was saved.
        let imported = self.imported_kinds(&quads)?;
        let sources: HashSet<_> = quads
            .iter()
            .filter(|q| q.predicate.as_ref() == rdf::TYPE)
            .filter(|q| match &q.object {
                Term::NamedNode(class) => {
                    Class::by_iri(class.as_str()).is_some() || imported.contains_key(class.as_str())
                }
                _ => false,
            })
            .map(|q| &q.subject)
            .collect();
        let mut txn = self.store.start_transaction()?;
        if replace_fields {
            for old in replaced_values(&txn, &quads, &self.data_graph())? {
                txn.remove(&old);
            }
            let graph = self.data_graph();
            for (subject, predicate) in cleared {
                let old = txn
                    .quads_for_pattern(
                        Some(subject.as_ref().into()),
                        Some(predicate.as_ref()),
                        None,
                        Some(GraphNameRef::NamedNode(graph.as_ref())),
                    )
                    .collect::<std::result::Result<Vec<_>, _>>()?;
                for quad in old {
                    txn.remove(&quad);
                }
            }
        }
        txn.extend(&schema_quads(&self.config.data_graph));
        txn.extend(&quads);
        txn.commit()?;
        Ok(SaveReport {
            quads: quads.len(),
            sources: sources.len(),
        })
    }

    fn data_graph(&self) -> NamedNode {
        NamedNode::new_unchecked(&self.config.data_graph)
    }

    /// The solutions of one of our own SELECT queries.
    fn select(&self, query: &str) -> Result<QuerySolutionIter<'_>> {
        let QueryResults::Solutions(solutions) = SparqlEvaluator::new()
            .parse_query(query)?
            .on_store(&self.store)
            .execute()?
        else {
            unreachable!("SELECT gives solutions");
        };
        Ok(solutions)
    }

    /// `pow source list`: every stored instance of DataSource (or of `kind` and its
    /// subclasses) in the data graph, sorted by ID.
    pub fn list(&self, kind: Option<&str>, full: bool) -> Result<Vec<ListEntry>> {
        let kind_iri = match kind {
            None => Class::by_name("DataSource").expect("DataSource").iri(),
            Some(k) => self.kind_iri(k)?,
        };
        let query = format!(
            "SELECT ?s (MIN(?c) AS ?comment) WHERE {{ \
             GRAPH <{SCHEMA_GRAPH}> {{ ?t <{sub}>* <{kind_iri}> }} \
             GRAPH <{data}> {{ ?s a ?t OPTIONAL {{ ?s <{comment}> ?c }} }} }} GROUP BY ?s",
            data = self.config.data_graph,
            sub = rdfs::SUB_CLASS_OF.as_str(),
            comment = rdfs::COMMENT.as_str(),
        );
        let solutions = self.select(&query)?;
        let mut out = Vec::new();
        for solution in solutions {
            let solution = solution?;
            let Some(Term::NamedNode(s)) = solution.get("s") else {
                continue;
            };
            let comment = match solution.get("comment") {
                Some(Term::Literal(l)) => Some(l.value().to_string()),
                _ => None,
            };
            out.push(ListEntry {
                id: if full {
                    s.as_str().to_string()
                } else {
                    shorten(s.as_str())
                },
                iri: s.as_str().to_string(),
                comment,
            });
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    fn objects(
        &self,
        subject: NamedOrBlankNodeRef<'_>,
        predicate: NamedNodeRef<'_>,
    ) -> Result<Vec<Term>> {
        let graph = self.data_graph();
        let mut out = Vec::new();
        for q in self.store.quads_for_pattern(
            Some(subject),
            Some(predicate),
            None,
            Some(GraphNameRef::NamedNode(graph.as_ref())),
        ) {
            let object = q?.object;
            if !out.contains(&object) {
                out.push(object);
            }
        }
        Ok(out)
    }

    /// The most specific known DataSource class of a stored subject, if any.
    fn class_of(
        &self,
        subject: NamedOrBlankNodeRef<'_>,
    ) -> Result<Option<(String, &'static Class)>> {
        let mut best: Option<(String, &'static Class, bool)> = None;
        for t in self.objects(subject, rdf::TYPE)? {
            let Term::NamedNode(t) = t else { continue };
            if let Some(class) = self.known_ancestor(t.as_str(), &HashMap::new())? {
                // On a tie, an imported subclass is the more specific.
                let imported = Class::by_iri(t.as_str()).is_none();
                if best.as_ref().is_none_or(|(_, b, b_imported)| {
                    (class.depth(), imported) > (b.depth(), *b_imported)
                }) {
                    best = Some((kind_name(t.as_str()), class, imported));
                }
            }
        }
        Ok(best.map(|(name, class, _)| (name, class)))
    }

    /// The class pow knows that `class_iri` is, or the most specific of pow's classes it is a
    /// subclass of (`rdfs:subClassOf+` in the schema graph, stored or in `extra`, the
    /// superclasses a file being saved gives): an imported schema's DataSource classes,
    /// OpenWormData's `NeuronCSVDataSource` say, are checked, shown and loaded by the fields of
    /// the class they extend.
    fn known_ancestor(
        &self,
        class_iri: &str,
        extra: &HashMap<&str, Vec<&str>>,
    ) -> Result<Option<&'static Class>> {
        if let Some(class) = Class::by_iri(class_iri) {
            return Ok(Some(class));
        }
        let schema = NamedNode::new_unchecked(SCHEMA_GRAPH);
        let mut seen: std::collections::HashSet<String> = [class_iri.to_string()].into();
        let mut frontier = vec![class_iri.to_string()];
        let mut best: Option<&'static Class> = None;
        // A walk, not a query: a cycle ends at classes seen, and `extra` is not stored yet.
        while let Some(class) = frontier.pop() {
            let Ok(node) = NamedNode::new(&class) else {
                continue;
            };
            let mut parents = Vec::new();
            for quad in self.store.quads_for_pattern(
                Some(node.as_ref().into()),
                Some(rdfs::SUB_CLASS_OF),
                None,
                Some(GraphNameRef::NamedNode(schema.as_ref())),
            ) {
                if let Term::NamedNode(parent) = quad?.object {
                    parents.push(parent.into_string());
                }
            }
            if let Some(given) = extra.get(class.as_str()) {
                parents.extend(given.iter().map(|p| p.to_string()));
            }
            for parent in parents {
                if let Some(known) = Class::by_iri(&parent) {
                    if best.is_none_or(|b| known.depth() > b.depth()) {
                        best = Some(known);
                    }
                } else if seen.insert(parent.clone()) {
                    frontier.push(parent);
                }
            }
        }
        Ok(best)
    }

    /// The classes of pow's that the types given in `quads` are ([`PowDir::known_ancestor`],
    /// with `quads`' own schema), for those not pow's own.
    fn imported_kinds(&self, quads: &[Quad]) -> Result<HashMap<String, &'static Class>> {
        let schema = NamedNode::new_unchecked(SCHEMA_GRAPH);
        let mut given: HashMap<&str, Vec<&str>> = HashMap::new();
        for quad in quads {
            if let (NamedOrBlankNode::NamedNode(class), Term::NamedNode(parent)) =
                (&quad.subject, &quad.object)
            {
                if quad.predicate.as_ref() == rdfs::SUB_CLASS_OF
                    && quad.graph_name.as_ref() == GraphNameRef::NamedNode(schema.as_ref())
                {
                    given
                        .entry(class.as_str())
                        .or_default()
                        .push(parent.as_str());
                }
            }
        }
        // Every type once, kinds or not: a file of OpenWorm's own statements types thousands
        // of cells and neurons.
        let mut walked: HashMap<&str, Option<&'static Class>> = HashMap::new();
        for quad in quads {
            let Term::NamedNode(class) = &quad.object else {
                continue;
            };
            if quad.predicate.as_ref() != rdf::TYPE
                || Class::by_iri(class.as_str()).is_some()
                || walked.contains_key(class.as_str())
            {
                continue;
            }
            let known = self.known_ancestor(class.as_str(), &given)?;
            walked.insert(class.as_str(), known);
        }
        Ok(walked
            .into_iter()
            .filter_map(|(class, known)| Some((class.to_string(), known?)))
            .collect())
    }

    /// The IRI of the kind `--kind K` names: a class pow knows, by name or IRI, or one an
    /// imported schema makes a subclass of DataSource (by IRI, or by name in the 2019 entities
    /// namespace).
    fn kind_iri(&self, kind: &str) -> Result<String> {
        if let Some(class) = Class::by_name(kind) {
            return Ok(class.iri());
        }
        let iri = if kind.contains(':') {
            resolve_id(kind)
        } else {
            format!("{ENTITIES}{kind}")
        };
        match self.known_ancestor(&iri, &HashMap::new())? {
            Some(_) => Ok(iri),
            None => Err(Error::UnknownKind {
                name: kind.to_string(),
                valid: self
                    .kinds()?
                    .into_iter()
                    .map(|k| k.name)
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
        }
    }

    /// `pow source kinds`: the classes that are DataSource or one of its subclasses
    /// (`rdfs:subClassOf*` in the schema graph, where `--kind` looks): pow's, and those an
    /// imported schema adds (`--kind` and `show` take them; a TOML `type =` takes pow's only),
    /// sorted by name.
    pub fn kinds(&self) -> Result<Vec<KindEntry>> {
        let query = format!(
            "SELECT DISTINCT ?t WHERE {{ GRAPH <{SCHEMA_GRAPH}> {{ ?t <{sub}>* <{base}> }} }}",
            sub = rdfs::SUB_CLASS_OF.as_str(),
            base = Class::by_name("DataSource").expect("DataSource").iri(),
        );
        let solutions = self.select(&query)?;
        let mut out = Vec::new();
        for solution in solutions {
            if let Some(Term::NamedNode(t)) = solution?.get("t") {
                out.push(KindEntry {
                    name: kind_name(t.as_str()),
                    iri: t.as_str().to_string(),
                });
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// `pow source derivs ID`: the data sources whose `source` field names ID, and so on
    /// down (2019's derivation tree), in the data graph. Each is listed under every source it
    /// derives from, and what derives from it is shown at its first place only (in the order
    /// printed; later ones are marked `repeated`), so a cycle ends and the tree stays as large
    /// as the graph. A blank node is listed, as `_:label`, with nothing under it.
    pub fn derivs(&self, id: &str) -> Result<Derivation> {
        let root = self.show(id)?;
        let source = Class::by_name("DataSource")
            .and_then(|c| c.field("source"))
            .expect("DataSource has `source`")
            .predicate();
        let source = NamedNode::new_unchecked(source);
        let mut seen = HashSet::from([root.iri.clone()]);
        self.derived_from(root.id, root.iri, source.as_ref(), &mut seen, 0)
    }

    fn derived_from(
        &self,
        id: String,
        iri: String,
        source: NamedNodeRef<'_>,
        seen: &mut HashSet<String>,
        depth: usize,
    ) -> Result<Derivation> {
        let node = NamedNode::new_unchecked(iri.as_str());
        let graph = self.data_graph();
        let mut children: Vec<(String, Option<String>)> = Vec::new();
        for quad in self.store.quads_for_pattern(
            None,
            Some(source),
            Some(node.as_ref().into()),
            Some(GraphNameRef::NamedNode(graph.as_ref())),
        ) {
            let child = match quad?.subject {
                NamedOrBlankNode::NamedNode(n) => (shorten(n.as_str()), Some(n.into_string())),
                NamedOrBlankNode::BlankNode(b) => (b.to_string(), None),
            };
            if !children.contains(&child) {
                children.push(child);
            }
        }
        children.sort();
        let cut = depth + 1 >= MAX_DERIVATION_DEPTH && !children.is_empty();
        let mut derived = Vec::new();
        for (child_id, child_iri) in children.into_iter().filter(|_| !cut) {
            let leaf = |repeated| Derivation {
                id: child_id.clone(),
                iri: child_iri.clone().unwrap_or_else(|| child_id.clone()),
                derived: Vec::new(),
                repeated,
                cut: false,
            };
            derived.push(match &child_iri {
                None => leaf(false),
                Some(iri) if !seen.insert(iri.clone()) => leaf(true),
                Some(iri) => {
                    self.derived_from(child_id.clone(), iri.clone(), source, seen, depth + 1)?
                }
            });
        }
        Ok(Derivation {
            id,
            iri,
            derived,
            repeated: false,
            cut,
        })
    }

    /// `pow source show ID`: the stored DataSource with its fields in 2019 order.
    pub fn show(&self, id: &str) -> Result<Shown> {
        let iri = resolve_id(id);
        let node = NamedNode::new(&iri).map_err(|_| Error::UnknownId(id.to_string()))?;
        self.show_node(node.as_ref(), 0)?.ok_or_else(|| {
            let exists = self
                .store
                .quads_for_pattern(Some(node.as_ref().into()), None, None, None)
                .next()
                .is_some();
            if exists {
                Error::NotADataSource(id.to_string())
            } else {
                Error::UnknownId(id.to_string())
            }
        })
    }

    fn show_node(&self, node: NamedNodeRef<'_>, depth: usize) -> Result<Option<Shown>> {
        let Some((class_name, class)) = self.class_of(node.into())? else {
            return Ok(None);
        };
        let mut fields = Vec::new();
        for f in class.fields() {
            let predicate = NamedNode::new_unchecked(f.predicate());
            let mut values = Vec::new();
            for term in self.objects(node.into(), predicate.as_ref())? {
                let nested = match (&term, depth < 3) {
                    (Term::NamedNode(n), true) => self.show_node(n.as_ref(), depth + 1)?,
                    _ => None,
                };
                values.push(match nested {
                    Some(shown) => Value::DataSource(Box::new(shown)),
                    None => Value::Term(term),
                });
            }
            if !values.is_empty() {
                values.sort_by_cached_key(Value::sort_key);
                fields.push(ShownField {
                    name: f.field.name,
                    display_name: f.field.display_name,
                    values,
                });
            }
        }
        Ok(Some(Shown {
            id: shorten(node.as_str()),
            iri: node.as_str().to_string(),
            class: class_name,
            fields,
        }))
    }

    /// `pow source query`: runs a SPARQL SELECT/ASK/CONSTRUCT/DESCRIBE over the whole store
    /// (the default graph is the union of all graphs) and renders the results.
    pub fn query(&self, sparql: &str, output: QueryOutput) -> Result<String> {
        let mut prepared = SparqlEvaluator::new().parse_query(sparql)?;
        prepared.dataset_mut().set_default_graph_as_union();
        let results = prepared.on_store(&self.store).execute()?;
        let format = match output {
            QueryOutput::Table => QueryResultsFormat::Tsv,
            QueryOutput::Json => QueryResultsFormat::Json,
        };
        let serializer = QueryResultsSerializer::from_format(format);
        let io = |e: std::io::Error| Error::Io {
            path: PathBuf::from("<output>"),
            source: e,
        };
        match results {
            QueryResults::Boolean(value) => match output {
                QueryOutput::Table => Ok(format!("{value}\n")),
                QueryOutput::Json => {
                    let bytes = serializer
                        .serialize_boolean_to_writer(Vec::new(), value)
                        .map_err(io)?;
                    Ok(String::from_utf8(bytes).expect("JSON is UTF-8") + "\n")
                }
            },
            QueryResults::Solutions(solutions) => {
                let mut writer = serializer
                    .serialize_solutions_to_writer(Vec::new(), solutions.variables().to_vec())
                    .map_err(io)?;
                for solution in solutions {
                    writer.serialize(&solution?).map_err(io)?;
                }
                let mut text = String::from_utf8(writer.finish().map_err(io)?).expect("UTF-8");
                if output == QueryOutput::Json {
                    text.push('\n');
                }
                Ok(text)
            }
            QueryResults::Graph(triples) => {
                let mut lines = triples
                    .map(|t| t.map(|t| format!("{t} .")))
                    .collect::<Result<Vec<_>, _>>()?;
                lines.sort();
                lines.dedup();
                Ok(match output {
                    QueryOutput::Table => lines.iter().map(|l| format!("{l}\n")).collect(),
                    QueryOutput::Json => serde_json::to_string_pretty(&lines).expect("JSON") + "\n",
                })
            }
        }
    }

    /// All quads, sorted by graph, subject, predicate, object (their N-Quads text).
    fn sorted_quads(&self) -> Result<Vec<Quad>> {
        let mut quads = self.store.iter().collect::<Result<Vec<_>, _>>()?;
        quads.retain(is_exported);
        quads.sort_by_cached_key(|q| {
            (
                q.graph_name.to_string(),
                q.subject.to_string(),
                q.predicate.to_string(),
                q.object.to_string(),
            )
        });
        Ok(quads)
    }

    /// `pow export --graphs`: writes each named graph to `graphs/<sha256 of its IRI>.nt` as
    /// sorted N-Triples, and `graphs/index` with lines `<file name> <graph IRI>` (the 2019
    /// layout that git tracked). Files of graphs no longer in the store are removed.
    pub fn export_graphs(&self) -> Result<Vec<PathBuf>> {
        use sha2::{Digest, Sha256};
        use std::collections::BTreeMap;
        let dir = self.dir.join(GRAPHS_DIR);
        std::fs::create_dir_all(&dir).map_err(Error::io(&dir))?;
        let mut graphs: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for q in self.store.iter() {
            let q = q?;
            if !is_exported(&q) {
                continue;
            }
            let name = match &q.graph_name {
                oxigraph::model::GraphName::NamedNode(n) => n.as_str().to_string(),
                other => other.to_string(),
            };
            graphs
                .entry(name)
                .or_default()
                .push(format!("{} {} {} .\n", q.subject, q.predicate, q.object));
        }
        // Each file whole or not at all, the index last, and the graphs gone from the store
        // removed only then: a killed export leaves every file as it was or as it is now.
        crate::loader::remove_interrupted_writes(&dir)?;
        let mut index = String::new();
        let mut written = Vec::new();
        for (graph, mut lines) in graphs {
            lines.sort();
            let file = format!("{}.nt", hex::encode(Sha256::digest(graph.as_bytes())));
            crate::loader::write_atomically(&dir, &file, lines.concat().as_bytes())?;
            index.push_str(&format!("{file} {graph}\n"));
            written.push(dir.join(file));
        }
        crate::loader::write_atomically(&dir, "index", index.as_bytes())?;
        for entry in std::fs::read_dir(&dir).map_err(Error::io(&dir))? {
            let path = entry.map_err(Error::io(&dir))?.path();
            if path.extension().is_some_and(|e| e == "nt") && !written.contains(&path) {
                std::fs::remove_file(&path).map_err(Error::io(&path))?;
            }
        }
        Ok(written)
    }

    /// `pow export`: the whole store in a stable, sorted form suitable for git.
    pub fn export(&self, format: ExportFormat) -> Result<String> {
        let quads = self.sorted_quads()?;
        match format {
            ExportFormat::NQuads => {
                // Sorted by line, as the 2019 tools sorted their N-Triples.
                let mut lines: Vec<String> = quads.iter().map(|q| format!("{q} .\n")).collect();
                lines.sort();
                Ok(lines.concat())
            }
            ExportFormat::Turtle => {
                let mut serializer = RdfSerializer::from_format(RdfFormat::TriG)
                    .with_prefix("rdf", "http://www.w3.org/1999/02/22-rdf-syntax-ns#")
                    .and_then(|s| s.with_prefix("rdfs", "http://www.w3.org/2000/01/rdf-schema#"))
                    .and_then(|s| s.with_prefix("xsd", "http://www.w3.org/2001/XMLSchema#"))
                    .expect("valid prefixes");
                for class in crate::schema::CLASSES {
                    serializer = serializer
                        .with_prefix(class.name, class.namespace)
                        .expect("valid prefix");
                }
                let mut writer = serializer.for_writer(Vec::new());
                let io = |e: std::io::Error| Error::Io {
                    path: PathBuf::from("<output>"),
                    source: e,
                };
                for q in &quads {
                    writer.serialize_quad(q).map_err(io)?;
                }
                Ok(String::from_utf8(writer.finish().map_err(io)?).expect("UTF-8"))
            }
        }
    }
}

/// Load state is about this machine (local paths), not about the data: exports leave it out.
fn is_exported(quad: &Quad) -> bool {
    !crate::loader::is_load_state(quad)
}

/// The stored values in `graph` that `quads` replace: for each subject and predicate they give
/// (but `rdf:type`), the values stored that `quads` do not have.
pub(crate) fn replaced_values(
    txn: &oxigraph::store::Transaction<'_>,
    quads: &[Quad],
    graph: &NamedNode,
) -> Result<Vec<Quad>> {
    let new: std::collections::HashSet<&Quad> = quads.iter().collect();
    let mut fields = std::collections::HashSet::new();
    let mut replaced = Vec::new();
    for q in quads {
        let in_graph =
            matches!(&q.graph_name, oxigraph::model::GraphName::NamedNode(g) if g == graph);
        if !in_graph || q.predicate.as_ref() == rdf::TYPE {
            continue;
        }
        if !fields.insert((&q.subject, &q.predicate)) {
            continue;
        }
        for old in txn.quads_for_pattern(
            Some(q.subject.as_ref()),
            Some(q.predicate.as_ref()),
            None,
            Some(GraphNameRef::NamedNode(graph.as_ref())),
        ) {
            let old = old?;
            if !new.contains(&old) {
                replaced.push(old);
            }
        }
    }
    Ok(replaced)
}
