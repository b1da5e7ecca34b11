//! The 2019 DataSource classes, their "Informational" fields and the IRIs they map to.
//!
//! Class IRI: `http://openworm.org/entities/<Class>`. Instance namespace: the class's
//! `rdf_namespace` (explicit `…/data_sources/<Class>#` for the classes that set one in 2019,
//! otherwise `…/entities/<Class>/`). Predicate IRI: the instance namespace of the class that
//! *declared* the field, followed by the field name.

use oxigraph::model::vocab::{rdf, rdfs};
use oxigraph::model::{NamedNode, NamedNodeRef, Quad};

/// Base namespace of the 2019 class IRIs.
pub const ENTITIES: &str = "http://openworm.org/entities/";
/// Default data graph ("data context").
pub const DATA_GRAPH: &str = "http://openworm.org/data";
/// Schema graph: classes, subclass chain, predicate labels.
pub const SCHEMA_GRAPH: &str = "http://openworm.org/schema";
/// Imports graph: context-import edges.
pub const IMPORTS_GRAPH: &str = "http://openworm.org/data/imports";
/// Predicate of a context-import edge.
pub const CONTEXT_IMPORTS: &str = "http://openworm.org/schema/Context/imports";
/// Namespace of the fields pow added to the 2019 classes (new terms stay out of OpenWorm's
/// namespaces, so data written by pow stays readable by the 2019 tools).
pub const POW_VOCAB: &str = "urn:x-pow:vocab#";

/// Whether a field holds literals or points to other resources.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldKind {
    /// A literal value (`DatatypeProperty`).
    Datatype,
    /// A reference to another resource (`ObjectProperty`).
    Object,
}

/// One "Informational" field of a class.
#[derive(Debug)]
pub struct Field {
    /// Attribute name, also the predicate's local name.
    pub name: &'static str,
    /// Label printed by `source show`.
    pub display_name: &'static str,
    /// Literal or object property.
    pub kind: FieldKind,
    /// Another field of the same object that receives the same value.
    pub also: Option<&'static str>,
    /// The predicate of a field pow added: in pow's own namespace ([`POW_VOCAB`]), not the
    /// 2019 class's. `None`: the class namespace followed by `name`, as in 2019.
    pub predicate: Option<&'static str>,
}

/// One DataSource class.
#[derive(Debug)]
pub struct Class {
    /// Class name, also the CURIE prefix of its instances.
    pub name: &'static str,
    /// Direct superclass, if any.
    pub parent: Option<&'static str>,
    /// Namespace of instances (keys) and of the predicates this class declares.
    pub namespace: &'static str,
    /// Fields declared by this class, in declaration order.
    pub own_fields: &'static [Field],
}

const fn lit(name: &'static str, display_name: &'static str) -> Field {
    Field {
        name,
        display_name,
        kind: FieldKind::Datatype,
        also: None,
        predicate: None,
    }
}

/// All known classes, base first.
pub static CLASSES: &[Class] = &[
    Class {
        name: "DataSource",
        parent: None,
        namespace: "http://openworm.org/entities/data_sources/DataSource#",
        own_fields: &[
            Field {
                name: "source",
                display_name: "Input source",
                kind: FieldKind::Object,
                also: None,
                predicate: None,
            },
            Field {
                name: "translation",
                display_name: "Translation",
                kind: FieldKind::Object,
                also: None,
                predicate: None,
            },
            lit("description", "Description"),
        ],
    },
    Class {
        name: "FileDataSource",
        parent: Some("DataSource"),
        namespace: "http://openworm.org/entities/data_sources/FileDataSource#",
        own_fields: &[
            lit("md5", "MD5 hash"),
            lit("sha256", "SHA-256 hash"),
            lit("sha512", "SHA-512 hash"),
        ],
    },
    Class {
        name: "LocalFileDataSource",
        parent: Some("FileDataSource"),
        namespace: "http://openworm.org/entities/data_sources/LocalFileDataSource#",
        own_fields: &[
            lit("file_name", "File name"),
            lit("torrent_file_name", "Torrent file name"),
            // The torrent's v1 info-hash, hex: `pow publish` records it, and a load refuses a
            // torrent from the store that is not this one, before downloading anything.
            Field {
                name: "info_hash",
                display_name: "BitTorrent info-hash",
                kind: FieldKind::Datatype,
                also: None,
                predicate: Some("urn:x-pow:vocab#infoHash"),
            },
        ],
    },
    Class {
        name: "CSVDataSource",
        parent: Some("LocalFileDataSource"),
        namespace: "http://openworm.org/entities/data_sources/CSVDataSource#",
        own_fields: &[
            Field {
                name: "csv_file_name",
                display_name: "CSV file name",
                kind: FieldKind::Datatype,
                also: Some("file_name"),
                predicate: None,
            },
            lit("csv_header", "Header column names"),
            lit("csv_field_delimiter", "CSV field delimiter"),
        ],
    },
    Class {
        name: "ConnectomeCSVDataSource",
        parent: Some("CSVDataSource"),
        namespace: "http://openworm.org/entities/ConnectomeCSVDataSource/",
        own_fields: &[],
    },
];

/// A field together with the class that declared it.
#[derive(Debug, Clone, Copy)]
pub struct FieldRef {
    /// The field.
    pub field: &'static Field,
    /// The class that declared it (its namespace gives the predicate).
    pub declared_by: &'static Class,
}

impl FieldRef {
    /// The predicate IRI of this field.
    pub fn predicate(&self) -> String {
        match self.field.predicate {
            Some(iri) => iri.to_string(),
            None => format!("{}{}", self.declared_by.namespace, self.field.name),
        }
    }
}

impl Class {
    /// Looks a class up by name.
    pub fn by_name(name: &str) -> Option<&'static Class> {
        CLASSES.iter().find(|c| c.name == name)
    }

    /// Looks a class up by its IRI.
    pub fn by_iri(iri: &str) -> Option<&'static Class> {
        iri.strip_prefix(ENTITIES).and_then(Class::by_name)
    }

    /// Names of all classes, for error messages.
    pub fn names() -> Vec<&'static str> {
        CLASSES.iter().map(|c| c.name).collect()
    }

    /// The class IRI.
    pub fn iri(&self) -> String {
        format!("{ENTITIES}{}", self.name)
    }

    /// This class's superclass.
    pub fn parent_class(&self) -> Option<&'static Class> {
        self.parent.and_then(Class::by_name)
    }

    /// Number of ancestors (DataSource is 0).
    pub fn depth(&self) -> usize {
        self.parent_class().map_or(0, |p| p.depth() + 1)
    }

    /// Whether `self` is `other` or one of its subclasses.
    pub fn is_a(&self, other: &Class) -> bool {
        self.name == other.name || self.parent_class().is_some_and(|p| p.is_a(other))
    }

    /// All fields in 2019 metaclass order: own fields, then those of each base class.
    pub fn fields(&'static self) -> Vec<FieldRef> {
        let mut out: Vec<FieldRef> = self
            .own_fields
            .iter()
            .map(|field| FieldRef {
                field,
                declared_by: self,
            })
            .collect();
        if let Some(parent) = self.parent_class() {
            out.extend(parent.fields());
        }
        out
    }

    /// A field of this class (own or inherited) by name.
    pub fn field(&'static self, name: &str) -> Option<FieldRef> {
        self.fields().into_iter().find(|f| f.field.name == name)
    }

    /// The IRI of the instance with string key `key` (2019: namespace + URL-quoted key).
    pub fn instance_iri(&self, key: &str) -> String {
        format!("{}{}", self.namespace, quote(key, b"/"))
    }
}

/// Python's `urllib.parse.quote`: keeps ASCII letters, digits, `_.-~` and `safe`.
pub fn quote(s: &str, safe: &[u8]) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        if b.is_ascii_alphanumeric() || b"_.-~".contains(&b) || safe.contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Expands an ID as `pow source show` takes it: `Type:key` (a class name as prefix, 2019's
/// bound class-name prefixes) or a full IRI, optionally in `<...>`.
pub fn resolve_id(id: &str) -> String {
    let id = id.trim();
    let id = id
        .strip_prefix('<')
        .and_then(|s| s.strip_suffix('>'))
        .unwrap_or(id);
    if let Some((prefix, rest)) = id.split_once(':') {
        if let Some(class) = Class::by_name(prefix) {
            return format!("{}{}", class.namespace, quote(rest, b"/%"));
        }
    }
    id.to_string()
}

/// Shortens an IRI to `Type:key` when it lies in a class's instance namespace.
pub fn shorten(iri: &str) -> String {
    CLASSES
        .iter()
        .filter_map(|c| {
            iri.strip_prefix(c.namespace)
                .filter(|rest| !rest.is_empty())
                .map(|rest| (c.namespace.len(), format!("{}:{rest}", c.name)))
        })
        .max_by_key(|(len, _)| *len)
        .map_or_else(|| iri.to_string(), |(_, short)| short)
}

fn node(iri: &str) -> NamedNode {
    NamedNode::new_unchecked(iri)
}

/// The schema quads: classes (`rdf:type rdfs:Class`, `rdfs:subClassOf`), predicates
/// (`rdf:type rdf:Property`, `rdfs:label` = display name, `rdfs:domain`), and the import
/// of the schema graph by the data graph.
pub fn schema_quads(data_graph: &str) -> Vec<Quad> {
    let schema = node(SCHEMA_GRAPH);
    let mut quads = Vec::new();
    let add =
        |quads: &mut Vec<Quad>, s: NamedNode, p: NamedNodeRef<'_>, o: oxigraph::model::Term| {
            quads.push(Quad::new(s, p, o, schema.clone()));
        };
    for class in CLASSES {
        let c = node(&class.iri());
        add(
            &mut quads,
            c.clone(),
            rdf::TYPE,
            rdfs::CLASS.into_owned().into(),
        );
        if let Some(parent) = class.parent_class() {
            add(
                &mut quads,
                c.clone(),
                rdfs::SUB_CLASS_OF,
                node(&parent.iri()).into(),
            );
        }
        for field in class.own_fields {
            let p = node(
                &FieldRef {
                    field,
                    declared_by: class,
                }
                .predicate(),
            );
            add(
                &mut quads,
                p.clone(),
                rdf::TYPE,
                rdf::PROPERTY.into_owned().into(),
            );
            add(
                &mut quads,
                p.clone(),
                rdfs::LABEL,
                oxigraph::model::Literal::new_simple_literal(field.display_name).into(),
            );
            add(&mut quads, p, rdfs::DOMAIN, c.clone().into());
        }
    }
    quads.push(Quad::new(
        node(data_graph),
        node(CONTEXT_IMPORTS),
        node(SCHEMA_GRAPH),
        node(IMPORTS_GRAPH),
    ));
    quads
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iris_match_2019() {
        let c = Class::by_name("ConnectomeCSVDataSource").unwrap();
        assert_eq!(
            c.instance_iri("2000_connections"),
            "http://openworm.org/entities/ConnectomeCSVDataSource/2000_connections"
        );
        assert_eq!(
            c.field("torrent_file_name").unwrap().predicate(),
            "http://openworm.org/entities/data_sources/LocalFileDataSource#torrent_file_name"
        );
        assert_eq!(
            c.field("csv_file_name").unwrap().predicate(),
            "http://openworm.org/entities/data_sources/CSVDataSource#csv_file_name"
        );
        assert_eq!(
            c.iri(),
            "http://openworm.org/entities/ConnectomeCSVDataSource"
        );
        assert_eq!(c.depth(), 4);
    }

    #[test]
    fn field_order_is_own_then_inherited() {
        let names: Vec<_> = Class::by_name("CSVDataSource")
            .unwrap()
            .fields()
            .iter()
            .map(|f| f.field.name)
            .collect();
        assert_eq!(
            names,
            [
                "csv_file_name",
                "csv_header",
                "csv_field_delimiter",
                "file_name",
                "torrent_file_name",
                "info_hash",
                "md5",
                "sha256",
                "sha512",
                "source",
                "translation",
                "description"
            ]
        );
    }

    #[test]
    fn ids_resolve_and_shorten() {
        let iri = "http://openworm.org/entities/ConnectomeCSVDataSource/2000_connections";
        assert_eq!(resolve_id("ConnectomeCSVDataSource:2000_connections"), iri);
        assert_eq!(resolve_id(&format!("<{iri}>")), iri);
        assert_eq!(resolve_id(iri), iri);
        assert_eq!(shorten(iri), "ConnectomeCSVDataSource:2000_connections");
        assert_eq!(shorten("http://example.org/x"), "http://example.org/x");
    }

    #[test]
    fn quote_like_python() {
        assert_eq!(quote("a b/c%", b"/"), "a%20b/c%25");
        assert_eq!(quote("é", b"/"), "%C3%A9");
    }
}
