//! Definitions files (`pow save FILE`): the TOML form and RDF files, turned into quads and
//! validated before anything is written.
//!
//! TOML form, mirroring the 2019 `pow_data(ns)` module:
//!
//! ```toml
//! [[source]]
//! type = "ConnectomeCSVDataSource"
//! key = "2000_connections"          # or: ident = "<full IRI>"
//! comment = "shown by source list"  # optional, rdfs:comment
//! csv_file_name = "connectome.csv"  # any field of the class; a list gives several values
//! torrent_file_name = "d9da5ce947c6f1c127dfcdc2ede63320.torrent"
//! ```

use crate::error::{Error, Result};
use crate::schema::{resolve_id, shorten, Class, FieldKind, ENTITIES};
use oxigraph::io::{RdfFormat, RdfParser};
use oxigraph::model::vocab::{rdf, rdfs, xsd};
use oxigraph::model::{GraphName, Literal, NamedNode, NamedNodeRef, NamedOrBlankNode, Quad, Term};
use std::collections::{HashMap, HashSet};
use std::path::Path;

/// How a file is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileFormat {
    /// The TOML definitions form.
    Toml,
    /// An RDF syntax Oxigraph parses.
    Rdf(RdfFormat),
}

impl FileFormat {
    /// Picks the format from the file extension.
    pub fn from_path(path: &Path) -> Result<FileFormat> {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        Ok(match ext.as_deref() {
            Some("toml") => FileFormat::Toml,
            // TriG is a superset of Turtle, and reads `pow export --format turtle` too.
            Some("ttl" | "turtle" | "trig") => FileFormat::Rdf(RdfFormat::TriG),
            Some("nt" | "ntriples") => FileFormat::Rdf(RdfFormat::NTriples),
            Some("nq" | "nquads") => FileFormat::Rdf(RdfFormat::NQuads),
            _ => return Err(Error::UnknownFormat(path.to_path_buf())),
        })
    }
}

/// Parses an RDF file; triples outside any named graph go into `data_graph`.
pub fn parse_rdf(
    path: &Path,
    bytes: &[u8],
    format: RdfFormat,
    data_graph: &str,
    rename_blank_nodes: bool,
) -> Result<Vec<Quad>> {
    let mut parser =
        RdfParser::from_format(format).with_default_graph(NamedNode::new_unchecked(data_graph));
    if rename_blank_nodes {
        parser = parser.rename_blank_nodes();
    }
    parser
        .for_slice(bytes)
        .map(|q| {
            q.map_err(|e| Error::Rdf {
                path: path.to_path_buf(),
                source: e.into(),
            })
        })
        .collect()
}

/// Parses the TOML form into quads in `data_graph`, checking classes, fields and value shapes.
pub fn parse_toml(path: &Path, text: &str, data_graph: &str) -> Result<Vec<Quad>> {
    Ok(parse_toml_fields(path, text, data_graph)?.0)
}

/// A source's field given as an empty list (`info_hash = []`): its stored values go.
pub type Cleared = (NamedNode, NamedNode);

/// As [`parse_toml`], and the fields given as empty lists. Without this, a value once saved
/// could not be taken away: a record whose `info_hash` named an earlier version of its torrent
/// refused every load of the new one until the store was deleted.
pub fn parse_toml_fields(
    path: &Path,
    text: &str,
    data_graph: &str,
) -> Result<(Vec<Quad>, Vec<Cleared>)> {
    let table: toml::Table = toml::from_str(text).map_err(|source| Error::Toml {
        path: path.to_path_buf(),
        source,
    })?;
    let graph = NamedNode::new_unchecked(data_graph);
    let mut quads = Vec::new();
    let mut cleared = Vec::new();
    // Two tables of one source merged their fields (a copied block whose key was left as it
    // was gave the first source two torrents): refused, naming both tables.
    let mut defined_at: HashMap<String, String> = HashMap::new();
    for (key, value) in &table {
        if key != "source" {
            return Err(Error::Definition {
                at: path.display().to_string(),
                message: format!("unknown top-level key {key:?}; expected [[source]] tables"),
            });
        }
        let sources = value.as_array().ok_or_else(|| Error::Definition {
            at: path.display().to_string(),
            message: "`source` must be an array of tables ([[source]])".into(),
        })?;
        for (i, source) in sources.iter().enumerate() {
            let at = format!("source {}", i + 1);
            let source = source.as_table().ok_or_else(|| Error::Definition {
                at: at.clone(),
                message: "expected a table".into(),
            })?;
            let subject = source_quads(&at, source, &graph, &mut quads, &mut cleared)?;
            if let Some(first) = defined_at.get(subject.as_str()) {
                return Err(definition(
                    &at,
                    format!(
                        "{} is defined in {first} already; give each source one [[source]] \
                         table (a list gives a field several values)",
                        shorten(subject.as_str())
                    ),
                ));
            }
            defined_at.insert(subject.into_string(), at);
        }
    }
    Ok((quads, cleared))
}

fn definition(at: &str, message: String) -> Error {
    Error::Definition {
        at: at.to_string(),
        message,
    }
}

fn source_quads(
    at: &str,
    source: &toml::Table,
    graph: &NamedNode,
    quads: &mut Vec<Quad>,
    cleared: &mut Vec<Cleared>,
) -> Result<NamedNode> {
    let type_name = match source.get("type") {
        Some(toml::Value::String(s)) => s.as_str(),
        Some(_) => return Err(definition(at, "`type` must be a string".into())),
        None => return Err(definition(at, "missing `type`".into())),
    };
    let class = Class::by_name(type_name).ok_or_else(|| Error::UnknownClass {
        at: at.to_string(),
        name: type_name.to_string(),
        valid: Class::names().join(", "),
    })?;
    let iri = match (source.get("key"), source.get("ident")) {
        (Some(toml::Value::String(key)), None) if !key.is_empty() => class.instance_iri(key),
        (None, Some(toml::Value::String(ident))) => resolve_id(ident),
        (Some(_), Some(_)) => return Err(definition(at, "give `key` or `ident`, not both".into())),
        (None, None) => return Err(definition(at, "missing `key` (or `ident`)".into())),
        _ => {
            return Err(definition(
                at,
                "`key`/`ident` must be a non-empty string".into(),
            ))
        }
    };
    let subject =
        NamedNode::new(&iri).map_err(|e| definition(at, format!("bad identifier {iri:?}: {e}")))?;
    quads.push(Quad::new(
        subject.clone(),
        rdf::TYPE,
        NamedNode::new_unchecked(class.iri()),
        graph.clone(),
    ));
    for (name, value) in source {
        if matches!(name.as_str(), "type" | "key" | "ident") {
            continue;
        }
        let (predicate, kind) = if name == "comment" {
            (rdfs::COMMENT.into_owned(), FieldKind::Datatype)
        } else {
            let field = class.field(name).ok_or_else(|| Error::UnknownField {
                at: at.to_string(),
                class: class.name.to_string(),
                field: name.clone(),
                valid: valid_fields(class),
            })?;
            (
                NamedNode::new_unchecked(field.predicate()),
                field.field.kind,
            )
        };
        let values = match value {
            toml::Value::Array(items) if items.is_empty() => {
                // A field another one names as `also` (file_name, for csv_file_name) goes
                // only with it: cleared alone, the stored one would stand without it.
                let kept_by = class.fields().into_iter().find(|f| {
                    f.field.also == Some(name.as_str())
                        && !matches!(source.get(f.field.name), Some(toml::Value::Array(a)) if a.is_empty())
                });
                if let Some(other) = kept_by {
                    return Err(definition(
                        at,
                        format!(
                            "{name} = [] would leave {}, which is {name} too: clear both",
                            other.field.name
                        ),
                    ));
                }
                cleared.push((subject.clone(), predicate.clone()));
                continue;
            }
            toml::Value::Array(items) => items.iter().collect(),
            single => vec![single],
        };
        for v in values {
            let object = toml_term(at, name, v, kind)?;
            quads.push(Quad::new(
                subject.clone(),
                predicate.clone(),
                object,
                graph.clone(),
            ));
        }
    }
    Ok(subject)
}

fn valid_fields(class: &'static Class) -> String {
    let mut names: Vec<&str> = class.fields().iter().map(|f| f.field.name).collect();
    names.push("comment");
    names.join(", ")
}

fn toml_term(at: &str, field: &str, value: &toml::Value, kind: FieldKind) -> Result<Term> {
    Ok(match (kind, value) {
        (FieldKind::Object, toml::Value::String(id)) => {
            let iri = resolve_id(id);
            NamedNode::new(&iri)
                .map_err(|e| definition(at, format!("{field}: bad identifier {id:?}: {e}")))?
                .into()
        }
        (FieldKind::Datatype, toml::Value::String(s)) => Literal::new_simple_literal(s).into(),
        (FieldKind::Datatype, toml::Value::Integer(n)) => Literal::from(*n).into(),
        (FieldKind::Datatype, toml::Value::Boolean(b)) => Literal::from(*b).into(),
        (FieldKind::Datatype, toml::Value::Float(f)) => Literal::from(*f).into(),
        _ => {
            return Err(definition(
                at,
                format!("{field}: expected a string (or a list of strings)"),
            ))
        }
    })
}

/// Checks the DataSource instances in `data_graph` and applies the `also` rule: unknown fields
/// of a known class, malformed `torrent_file_name` and hashes, and conflicting `also` values are
/// errors. With `complete`, a missing `also` target gets the source field's values. `imported`:
/// the class of pow's that each type an imported schema adds is checked as.
pub fn check(
    quads: &mut Vec<Quad>,
    data_graph: &str,
    complete: bool,
    imported: &HashMap<String, &'static Class>,
) -> Result<()> {
    // Where sources were loaded and verified on this machine is written by `source load` and
    // `publish` only: imported, it would choose where a load writes (its recorded directory)
    // and what `source seed --all` serves.
    let local = crate::loader::LOADER_STATE_GRAPH;
    if let Some(q) = quads.iter().find(|q| crate::loader::is_load_state(q)) {
        return Err(Error::Definition {
            at: q.subject.to_string(),
            message: format!(
                "the graph <{local}> is this machine's load state, written by `pow source load` \
                 and `pow publish`; it is not saved or imported (`pow export` leaves it out)"
            ),
        });
    }
    let graph = GraphName::NamedNode(NamedNode::new_unchecked(data_graph));
    let mut by_subject: HashMap<NamedOrBlankNode, Vec<usize>> = HashMap::new();
    for (i, q) in quads.iter().enumerate() {
        if q.graph_name == graph {
            by_subject.entry(q.subject.clone()).or_default().push(i);
        }
    }
    let mut subjects: Vec<_> = by_subject.into_iter().collect();
    subjects.sort_by_key(|(s, _)| s.to_string());
    let mut added = Vec::new();
    for (subject, indices) in subjects {
        let mine: Vec<&Quad> = indices.iter().map(|&i| &quads[i]).collect();
        let types: Vec<&str> = mine
            .iter()
            .filter(|q| q.predicate.as_ref() == rdf::TYPE)
            .filter_map(|q| match &q.object {
                Term::NamedNode(n) => Some(n.as_str()),
                _ => None,
            })
            .collect();
        let Some(class) = types
            .iter()
            .filter_map(|t| Class::by_iri(t).or_else(|| imported.get(*t).copied()))
            .max_by_key(|c| c.depth())
        else {
            continue;
        };
        let at = match &subject {
            NamedOrBlankNode::NamedNode(n) => shorten(n.as_str()),
            other => other.to_string(),
        };
        let fields = class.fields();
        // Types this crate does not know may bring predicates of their own: then only
        // the known fields are checked.
        let all_types_known = types.iter().all(|t| {
            Class::by_iri(t).is_some() || (!t.starts_with(ENTITIES) && !imported.contains_key(*t))
        });
        let values_of = |predicate: &str| -> HashSet<&Term> {
            mine.iter()
                .filter(|q| q.predicate.as_str() == predicate)
                .map(|q| &q.object)
                .collect()
        };
        if all_types_known {
            for q in &mine {
                let p = q.predicate.as_str();
                let in_ds_namespace = p.starts_with("http://openworm.org/entities/data_sources/")
                    || fields
                        .iter()
                        .any(|f| p.starts_with(f.declared_by.namespace));
                if in_ds_namespace && !fields.iter().any(|f| f.predicate() == p) {
                    let name = p.rsplit(['#', '/']).next().unwrap_or(p).to_string();
                    return Err(Error::UnknownField {
                        at,
                        class: class.name.to_string(),
                        field: name,
                        valid: valid_fields(class),
                    });
                }
            }
        }
        for f in &fields {
            let values = values_of(&f.predicate());
            for v in &values {
                check_value(&at, f.field.name, v)?;
            }
            let Some(target_name) = f.field.also else {
                continue;
            };
            if values.is_empty() {
                continue;
            }
            let target = class
                .field(target_name)
                .expect("also names a field of the class");
            let target_values = values_of(&target.predicate());
            if target_values.is_empty() {
                if complete {
                    for v in &values {
                        added.push(Quad::new(
                            subject.clone(),
                            NamedNode::new_unchecked(target.predicate()),
                            (*v).clone(),
                            graph.clone(),
                        ));
                    }
                }
            } else if target_values != values {
                return Err(Error::ConflictingAlso {
                    at,
                    from: f.field.name.to_string(),
                    target: target_name.to_string(),
                    from_value: show_values(&values),
                    target_value: show_values(&target_values),
                });
            }
        }
    }
    quads.extend(added);
    Ok(())
}

fn show_values(values: &HashSet<&Term>) -> String {
    let mut texts: Vec<String> = values.iter().map(|t| value_text(t)).collect();
    texts.sort();
    texts.join(", ")
}

fn literal_text(value: &Term) -> Option<&str> {
    match value {
        Term::Literal(l) => Some(l.value()),
        _ => None,
    }
}

fn is_hex(s: &str, digits: usize) -> bool {
    s.len() == digits && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn check_value(at: &str, field: &str, value: &Term) -> Result<()> {
    let text = literal_text(value).unwrap_or_default();
    match field {
        "torrent_file_name" => {
            let ok = text
                .strip_suffix(".torrent")
                .is_some_and(|md5| is_hex(md5, 32));
            if !ok {
                return Err(Error::BadTorrentFileName {
                    at: at.to_string(),
                    value: value_text(value),
                });
            }
        }
        "md5" | "sha256" | "sha512" | "info_hash" => {
            let digits = match field {
                "md5" => 32,
                "info_hash" => 40,
                "sha256" => 64,
                _ => 128,
            };
            if !is_hex(text, digits) {
                return Err(Error::BadHash {
                    at: at.to_string(),
                    field: field.to_string(),
                    value: value_text(value),
                    digits,
                });
            }
        }
        _ => {}
    }
    Ok(())
}

fn value_text(value: &Term) -> String {
    literal_text(value).map_or_else(|| value.to_string(), str::to_string)
}

/// Whether a literal is a string (printed repr-quoted by `show`).
pub fn is_string_literal(l: &Literal) -> bool {
    let dt: NamedNodeRef<'_> = l.datatype();
    dt == xsd::STRING || dt == rdf::LANG_STRING
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::DATA_GRAPH;

    const SEED: &str = r#"
[[source]]
type = "ConnectomeCSVDataSource"
key = "2000_connections"
csv_file_name = "connectome.csv"
torrent_file_name = "d9da5ce947c6f1c127dfcdc2ede63320.torrent"
"#;

    fn parse(text: &str) -> Result<Vec<Quad>> {
        let mut quads = parse_toml(Path::new("t.toml"), text, DATA_GRAPH)?;
        check(&mut quads, DATA_GRAPH, true, &HashMap::new())?;
        Ok(quads)
    }

    #[test]
    fn seed_example_gives_four_quads_with_also() {
        let quads = parse(SEED).unwrap();
        assert_eq!(quads.len(), 4);
        let file_name = quads
            .iter()
            .find(|q| {
                q.predicate
                    .as_str()
                    .ends_with("LocalFileDataSource#file_name")
            })
            .expect("also gives file_name");
        assert_eq!(file_name.object.to_string(), "\"connectome.csv\"");
    }

    #[test]
    fn unknown_class_lists_valid_ones() {
        let err = parse("[[source]]\ntype = \"Nope\"\nkey = \"k\"\n").unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("\"Nope\"") && msg.contains("ConnectomeCSVDataSource"),
            "{msg}"
        );
    }

    #[test]
    fn unknown_field_lists_valid_ones() {
        let err = parse(&SEED.replace("csv_file_name", "csv_filename")).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("\"csv_filename\"") && msg.contains("csv_file_name, "),
            "{msg}"
        );
    }

    #[test]
    fn bad_torrent_file_name() {
        let err = parse(&SEED.replace("d9da5ce947c6f1c127dfcdc2ede63320", "d9da")).unwrap_err();
        assert!(matches!(err, Error::BadTorrentFileName { .. }), "{err}");
    }

    /// `info_hash` is pow's field, in pow's namespace: 40 hex digits.
    #[test]
    fn info_hash_is_checked_and_in_pows_namespace() {
        let hash = "7bf7bcde0f2e63d1eca190e9149eea2853449e08";
        let quads = parse(&format!("{SEED}info_hash = \"{hash}\"\n")).unwrap();
        let q = quads
            .iter()
            .find(|q| q.object.to_string() == format!("\"{hash}\""))
            .unwrap();
        assert_eq!(q.predicate.as_str(), "urn:x-pow:vocab#infoHash");
        assert!(q.predicate.as_str().starts_with(crate::schema::POW_VOCAB));
        let err = parse(&format!("{SEED}info_hash = \"{}\"\n", &hash[..39])).unwrap_err();
        assert!(matches!(err, Error::BadHash { digits: 40, .. }), "{err}");
    }

    /// A copied table whose key was left as it was would have merged into the first source.
    #[test]
    fn a_source_defined_twice_is_refused() {
        let twice = format!("{SEED}\n{}", SEED.replace("d9da5ce9", "00000000"));
        let err = parse(&twice).unwrap_err().to_string();
        assert!(
            err.contains("source 2")
                && err.contains("ConnectomeCSVDataSource:2000_connections is defined in source 1"),
            "{err}"
        );
        // The same source by its full IRI is the same source.
        let by_ident = SEED.replace(
            "key = \"2000_connections\"",
            "ident = \"http://openworm.org/entities/ConnectomeCSVDataSource/2000_connections\"",
        );
        assert!(parse(&format!("{SEED}\n{by_ident}")).is_err());
        // Another key is another source.
        parse(&format!("{SEED}\n{}", SEED.replace("2000_", "3000_"))).unwrap();
    }

    #[test]
    fn conflicting_also() {
        let err = parse(&format!("{SEED}file_name = \"other.csv\"\n")).unwrap_err();
        assert!(matches!(err, Error::ConflictingAlso { .. }), "{err}");
        // The same value twice is no conflict.
        parse(&format!("{SEED}file_name = \"connectome.csv\"\n")).unwrap();
    }

    #[test]
    fn rdf_unknown_field_of_known_class() {
        let ttl = "<http://openworm.org/entities/ConnectomeCSVDataSource/x> a <http://openworm.org/entities/ConnectomeCSVDataSource> ; <http://openworm.org/entities/data_sources/CSVDataSource#nope> \"1\" .";
        let mut quads = parse_rdf(
            Path::new("x.ttl"),
            ttl.as_bytes(),
            RdfFormat::TriG,
            DATA_GRAPH,
            true,
        )
        .unwrap();
        let err = check(&mut quads, DATA_GRAPH, true, &HashMap::new()).unwrap_err();
        assert!(matches!(err, Error::UnknownField { .. }), "{err}");
    }

    /// Load state in a saved or imported file is refused: it would choose where `source load`
    /// writes (it was stored, and a load then wrote into the directory it named).
    #[test]
    fn load_state_is_not_saved_or_imported() {
        let trig = "<urn:x-local:loader-state> { <http://openworm.org/entities/ConnectomeCSVDataSource/x> <urn:x-pow:vocab#localDirectory> \"/home/u\" . }";
        for complete in [true, false] {
            let mut quads = parse_rdf(
                Path::new("x.trig"),
                trig.as_bytes(),
                RdfFormat::TriG,
                DATA_GRAPH,
                complete,
            )
            .unwrap();
            let err = check(&mut quads, DATA_GRAPH, complete, &HashMap::new()).unwrap_err();
            assert!(
                err.to_string().contains("is this machine's load state"),
                "{err}"
            );
        }
    }
}
