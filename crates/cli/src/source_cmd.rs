//! `pow init`, `pow save`, `pow source list|show|query`, `pow export`, `pow import`:
//! a thin layer over the `pow-datasource` crate.

use clap::{Args, Subcommand, ValueEnum};
use pow_datasource::{ExportFormat, PowDir, QueryOutput};
use std::error::Error;
use std::path::{Path, PathBuf};

type CmdResult = Result<(), Box<dyn Error>>;

/// Default location of the project directory.
pub(crate) const DEFAULT_POW_DIR: &str = ".pow";

/// `pow save`.
#[derive(Args)]
pub struct SaveArgs {
    /// Definitions file: .toml ([[source]] tables), .ttl, .trig, .nt or .nq.
    pub file: PathBuf,
    /// Print what was saved as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `pow source ...`.
#[derive(Subcommand)]
pub enum SourceCommand {
    /// List stored data sources: ID and comment.
    List {
        /// Only this class and its subclasses (a class name or IRI).
        #[arg(long, value_name = "TYPE")]
        kind: Option<String>,
        /// Full IRIs instead of the short Type:key form.
        #[arg(long)]
        full: bool,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// List the kinds of data source: DataSource and its subclasses (what --kind and `type =`
    /// take).
    Kinds {
        /// Class IRIs instead of names.
        #[arg(long)]
        full: bool,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Show data sources in the 2019 format (class name, then each field).
    Show {
        /// IDs: Type:key or full IRIs.
        #[arg(required = true, value_name = "ID")]
        ids: Vec<String>,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Show the data sources derived from one: those whose `source` field names it, and so
    /// on down, as a tree (4 spaces a level).
    Derivs {
        /// Type:key or full IRI.
        #[arg(value_name = "ID")]
        id: String,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Create one data source from the command line (the ad-hoc form of `pow save`), validated
    /// the same way; refused if it exists (change one with `pow save` or `pow publish`).
    Create {
        /// Its class (e.g. ConnectomeCSVDataSource).
        #[arg(value_name = "TYPE")]
        kind: String,
        /// Its key (e.g. 2000_connections).
        key: String,
        /// A field's value (e.g. torrent_file_name=<md5>.torrent); repeatable.
        #[arg(long = "set", value_name = "FIELD=VALUE")]
        set: Vec<String>,
    },
    /// Run a SPARQL SELECT/ASK/CONSTRUCT query (the default graph is the union of all graphs).
    Query {
        /// The query text.
        sparql: String,
        /// SPARQL JSON results instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Fetch a data source's torrent from the torrent store, download its content by
    /// BitTorrent, check its integrity (SHA-1 pieces, MD5 = torrent name, md5/sha256 fields),
    /// record where it is, and print the directory.
    Load(crate::load_cmd::LoadArgs),
    /// Run the integrity checks alone on a data source's content on disk.
    Verify(crate::load_cmd::SourceVerifyArgs),
    /// Seed data sources loaded on this machine (or --all of them) on one peer port, each
    /// checked on disk first, until interrupted.
    Seed(crate::source_seed_cmd::SourceSeedArgs),
}

/// Syntax of `pow export`.
#[derive(Clone, Copy, ValueEnum)]
pub enum ExportSyntax {
    /// Sorted N-Quads.
    Nquads,
    /// Sorted TriG (Turtle with graph blocks).
    Turtle,
}

/// `pow export`.
#[derive(Args)]
pub struct ExportArgs {
    /// Output syntax.
    #[arg(long, value_enum, default_value = "nquads")]
    pub format: ExportSyntax,
    /// Write to this file instead of standard output.
    #[arg(long, short, conflicts_with = "graphs")]
    pub output: Option<PathBuf>,
    /// Write one sorted N-Triples file per graph into .pow/graphs/ (plus graphs/index), for git.
    #[arg(long)]
    pub graphs: bool,
}

/// `pow import`.
#[derive(Args)]
pub struct ImportArgs {
    /// An export (.nq, .trig/.ttl) or any RDF file.
    pub file: PathBuf,
}

/// Where the `.pow` directory is, and whether the user said so.
pub(crate) fn location(pow_dir: Option<&Path>) -> (PathBuf, bool) {
    match pow_dir {
        Some(dir) => (dir.to_path_buf(), true),
        None => (PathBuf::from(DEFAULT_POW_DIR), false),
    }
}

pub(crate) fn open(pow_dir: Option<&Path>) -> Result<PowDir, Box<dyn Error>> {
    let (dir, explicit) = location(pow_dir);
    Ok(PowDir::open(&dir, explicit)?)
}

/// `pow init`.
pub fn init(pow_dir: Option<&Path>) -> CmdResult {
    let (dir, _) = location(pow_dir);
    PowDir::init(&dir)?;
    println!("initialised {}", dir.display());
    Ok(())
}

/// `pow save FILE`.
pub fn save(pow_dir: Option<&Path>, args: SaveArgs) -> CmdResult {
    let pow = open(pow_dir)?;
    let report = pow.save_file(&args.file)?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "saved {} data source(s), {} statement(s) from {}",
            report.sources,
            report.quads,
            args.file.display()
        );
    }
    Ok(())
}

impl SourceCommand {
    /// It downloads or seeds (and so talks to peers and trackers until it is done).
    pub fn runs_a_swarm(&self) -> bool {
        matches!(self, SourceCommand::Load(_) | SourceCommand::Seed(_))
    }
}

/// `pow source ...`.
pub fn source(pow_dir: Option<&Path>, cmd: SourceCommand) -> CmdResult {
    let cmd = match cmd {
        SourceCommand::Load(args) => return crate::load_cmd::load(pow_dir, args),
        SourceCommand::Verify(args) => return crate::load_cmd::verify(pow_dir, args),
        SourceCommand::Seed(args) => return crate::source_seed_cmd::seed(pow_dir, args),
        other => other,
    };
    let pow = open(pow_dir)?;
    match cmd {
        SourceCommand::Load(_) | SourceCommand::Verify(_) | SourceCommand::Seed(_) => {
            unreachable!("handled above")
        }
        SourceCommand::List { kind, full, json } => {
            let entries = pow.list(kind.as_deref(), full)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&entries)?);
            } else {
                for e in entries {
                    match e.comment {
                        Some(c) => println!("{}\t{}", e.id, c),
                        None => println!("{}", e.id),
                    }
                }
            }
        }
        SourceCommand::Kinds { full, json } => {
            let kinds = pow.kinds()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&kinds)?);
            } else {
                for k in kinds {
                    println!("{}", if full { &k.iri } else { &k.name });
                }
            }
        }
        SourceCommand::Derivs { id, json } => {
            let tree = pow.derivs(&id)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&tree)?);
            } else {
                print!("{}", tree.format());
            }
        }
        SourceCommand::Show { ids, json } => {
            let shown = ids
                .iter()
                .map(|id| pow.show(id))
                .collect::<Result<Vec<_>, _>>()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&shown)?);
            } else {
                for s in shown {
                    print!("{}", s.format());
                }
            }
        }
        SourceCommand::Create { kind, key, set } => {
            // The IRI it would be made under (a `Type:key` ID reads `%` as already quoted, so
            // `a%41` was looked for as `aA` and an existing `a%2541` was changed).
            let id = pow_datasource::Class::by_name(&kind).map_or_else(
                || format!("{kind}:{key}"),
                |c| format!("<{}>", c.instance_iri(&key)),
            );
            if let Ok(existing) = pow.show(&id) {
                return Err(format!(
                    "{} already exists (change it with pow save or pow publish)",
                    existing.id
                )
                .into());
            }
            let fields = set
                .iter()
                .map(|pair| match pair.split_once('=') {
                    // They would replace the TYPE and KEY given, past the check above: an
                    // existing source was changed through `--set key=`.
                    Some((field @ ("type" | "key"), _)) => Err(format!(
                        "--set {pair}: the {field} is given as TYPE KEY, not with --set"
                    )),
                    Some((f, v)) => Ok((f.to_string(), v.to_string())),
                    None => Err(format!("--set {pair}: expected FIELD=VALUE")),
                })
                .collect::<Result<Vec<_>, _>>()?;
            let iri = pow.upsert_source(&kind, &key, &fields)?;
            println!("{}", pow_datasource::schema::shorten(&iri));
        }
        SourceCommand::Query { sparql, json } => {
            let output = if json {
                QueryOutput::Json
            } else {
                QueryOutput::Table
            };
            print!("{}", pow.query(&sparql, output)?);
        }
    }
    Ok(())
}

/// `pow export`.
pub fn export(pow_dir: Option<&Path>, args: ExportArgs) -> CmdResult {
    let pow = open(pow_dir)?;
    if args.graphs {
        for path in pow.export_graphs()? {
            println!("{}", path.display());
        }
        return Ok(());
    }
    let format = match args.format {
        ExportSyntax::Nquads => ExportFormat::NQuads,
        ExportSyntax::Turtle => ExportFormat::Turtle,
    };
    let text = pow.export(format)?;
    match args.output {
        Some(path) => write_export(&path, text.as_bytes())
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?,
        None => print!("{text}"),
    }
    Ok(())
}

/// Writes an export to `path`: a regular file (or a new one) whole or not at all, by temp
/// file and rename, so a killed export leaves the last one as it was, with the old file's
/// permissions; anything else (`/dev/stdout`, a pipe, a symlink) written to as it is.
fn write_export(path: &Path, bytes: &[u8]) -> Result<(), Box<dyn std::error::Error>> {
    let old = std::fs::symlink_metadata(path).ok();
    let name = path.file_name().and_then(|n| n.to_str());
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let replaceable = old.as_ref().is_none_or(|m| m.file_type().is_file());
    match (name, replaceable && dir.is_dir()) {
        (Some(name), true) => {
            let permissions = old.map(|old| old.permissions());
            pow_datasource::loader::write_atomically_as(dir, name, bytes, permissions)?;
        }
        _ => std::fs::write(path, bytes)?,
    }
    Ok(())
}

/// `pow import FILE`.
pub fn import(pow_dir: Option<&Path>, args: ImportArgs) -> CmdResult {
    let pow = open(pow_dir)?;
    let report = pow.import_file(&args.file)?;
    println!(
        "imported {} statement(s) from {}",
        report.quads,
        args.file.display()
    );
    Ok(())
}
