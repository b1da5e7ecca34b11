//! What `pow source show` prints, in the 2019 `DataSource.format_str(stored=True)` format:
//! the class name, then one line per field that has values, in class order, 4-space indent,
//! `Display name: ` and the values sorted and repr-quoted, separated by a space. A nested
//! DataSource's lines continue under the value column. Trailing spaces are not printed.

use crate::definitions::is_string_literal;
use oxigraph::model::Term;
use serde::Serialize;

/// A stored DataSource as `show` sees it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Shown {
    /// `Type:key` form.
    pub id: String,
    /// Full IRI.
    pub iri: String,
    /// Its most specific class: pow's, or one an imported schema makes a subclass of pow's.
    pub class: String,
    /// Fields with values, in class order.
    pub fields: Vec<ShownField>,
}

/// One field line.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ShownField {
    /// Attribute name.
    pub name: &'static str,
    /// Label.
    pub display_name: &'static str,
    /// Sorted values.
    pub values: Vec<Value>,
}

/// A field value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A literal, IRI or blank node.
    Term(Term),
    /// Another stored DataSource (the `source` field).
    DataSource(Box<Shown>),
}

impl Serialize for Value {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Value::Term(Term::Literal(l)) => s.serialize_str(l.value()),
            Value::Term(Term::NamedNode(n)) => s.serialize_str(n.as_str()),
            Value::Term(other) => s.serialize_str(&other.to_string()),
            Value::DataSource(shown) => shown.serialize(s),
        }
    }
}

impl Value {
    /// Python's `sorted` of the 2019 values: by text.
    pub fn sort_key(&self) -> String {
        match self {
            Value::Term(Term::Literal(l)) => l.value().to_string(),
            Value::Term(Term::NamedNode(n)) => n.as_str().to_string(),
            Value::Term(other) => other.to_string(),
            Value::DataSource(shown) => shown.iri.clone(),
        }
    }

    fn render(&self) -> String {
        match self {
            Value::Term(Term::Literal(l)) if is_string_literal(l) => python_repr(l.value()),
            Value::Term(Term::Literal(l)) => l.value().to_string(),
            // rdflib's n3(): `<iri>`, `_:id`.
            Value::Term(other) => other.to_string(),
            Value::DataSource(shown) => shown.format(),
        }
    }
}

impl Shown {
    /// The 2019 text form, ending in a newline.
    pub fn format(&self) -> String {
        let mut out = format!("{}\n", self.class);
        for field in &self.fields {
            let sep = format!("\n      {}", " ".repeat(field.display_name.len()));
            let values: Vec<String> = field
                .values
                .iter()
                .map(|v| {
                    v.render()
                        .trim_end()
                        .split('\n')
                        .collect::<Vec<_>>()
                        .join(&sep)
                })
                .collect();
            let line = format!("    {}: {}", field.display_name, values.join(" "));
            for l in line.split('\n') {
                out.push_str(l.trim_end());
                out.push('\n');
            }
        }
        out
    }
}

/// Python 3's `repr(str)`: single quotes unless the text has `'` and no `"`.
pub fn python_repr(s: &str) -> String {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::with_capacity(s.len() + 2);
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use oxigraph::model::Literal;

    fn string(s: &str) -> Value {
        Value::Term(Literal::new_simple_literal(s).into())
    }

    #[test]
    fn seed_format() {
        let shown = Shown {
            id: "ConnectomeCSVDataSource:2000_connections".into(),
            iri: String::new(),
            class: "ConnectomeCSVDataSource".into(),
            fields: vec![
                ShownField {
                    name: "csv_file_name",
                    display_name: "CSV file name",
                    values: vec![string("connectome.csv")],
                },
                ShownField {
                    name: "file_name",
                    display_name: "File name",
                    values: vec![string("connectome.csv")],
                },
                ShownField {
                    name: "torrent_file_name",
                    display_name: "Torrent file name",
                    values: vec![string("d9da5ce947c6f1c127dfcdc2ede63320.torrent")],
                },
            ],
        };
        assert_eq!(
            shown.format(),
            "ConnectomeCSVDataSource\n    CSV file name: 'connectome.csv'\n    File name: 'connectome.csv'\n    Torrent file name: 'd9da5ce947c6f1c127dfcdc2ede63320.torrent'\n"
        );
    }

    #[test]
    fn repr_like_python() {
        assert_eq!(python_repr("a"), "'a'");
        assert_eq!(python_repr("it's"), "\"it's\"");
        assert_eq!(python_repr("'\""), "'\\'\"'");
        assert_eq!(python_repr("a\\b\n"), "'a\\\\b\\n'");
    }
}
