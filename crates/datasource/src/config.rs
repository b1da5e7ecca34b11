//! `pow.toml`: the project's configuration inside `.pow/`.

use crate::error::{Error, Result};
use crate::schema::DATA_GRAPH;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// File name of the config inside `.pow/`.
pub const CONFIG_FILE: &str = "pow.toml";

/// The contents of `pow.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// IRI of the named graph that holds DataSource instances.
    pub data_graph: String,
    /// Where `.torrent` files are fetched from: a URL or a directory (relative to `.pow/`).
    pub torrent_store: String,
    /// Base directory for downloaded data (relative to `.pow/`).
    pub download_dir: String,
    /// Announce URLs used when publishing.
    #[serde(default)]
    pub trackers: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_graph: DATA_GRAPH.to_string(),
            torrent_store: "torrents".to_string(),
            download_dir: "data_source_data".to_string(),
            trackers: Vec::new(),
        }
    }
}

impl Config {
    /// Reads `pow.toml` from a `.pow` directory.
    pub fn load(pow_dir: &Path) -> Result<Config> {
        let path = pow_dir.join(CONFIG_FILE);
        let text = std::fs::read_to_string(&path).map_err(Error::io(&path))?;
        let config: Config = toml::from_str(&text).map_err(|source| Error::Config {
            path: path.clone(),
            source,
        })?;
        // Every query and statement names this graph (unchecked from here on): a value that is
        // no IRI was stored as one, and later commands failed with "bad SPARQL: ... expected
        // {", nothing pointing at pow.toml.
        if let Err(e) = oxigraph::model::NamedNode::new(&config.data_graph) {
            return Err(Error::Definition {
                at: path.display().to_string(),
                message: format!("data_graph {:?} is not an IRI: {e}", config.data_graph),
            });
        }
        Ok(config)
    }

    /// Writes `pow.toml` into a `.pow` directory, whole or not at all (temp file, rename).
    pub fn write(&self, pow_dir: &Path) -> Result<()> {
        let body = toml::to_string(self).expect("config serialises");
        let text = format!("# pow project configuration (see `pow init`).\n{body}");
        crate::loader::write_atomically(pow_dir, CONFIG_FILE, text.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_toml() {
        let config = Config {
            trackers: vec!["udp://127.0.0.1:6969".into()],
            ..Config::default()
        };
        let text = toml::to_string(&config).unwrap();
        assert!(text.contains("data_graph = \"http://openworm.org/data\""));
        assert_eq!(toml::from_str::<Config>(&text).unwrap(), config);
    }

    #[test]
    fn a_data_graph_that_is_no_iri_is_refused_naming_the_file() {
        let dir = std::env::temp_dir().join(format!("pow-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let text = toml::to_string(&Config::default())
            .unwrap()
            .replace("http://openworm.org/data", "http://x/a> } } #");
        std::fs::write(dir.join(CONFIG_FILE), text).unwrap();
        let error = Config::load(&dir).unwrap_err().to_string();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(
            error.contains(CONFIG_FILE) && error.contains("is not an IRI"),
            "{error}"
        );
    }
}
