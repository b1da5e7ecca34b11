//! `pow torrent show` and `pow torrent create`.

use crate::CmdResult;
use clap::{Args, Subcommand};
use pow_datasource::loader::{write_atomically, write_new};
use pow_metainfo::create::{check_options, create_with_progress, Content, CreateOptions};
use pow_metainfo::Metainfo;
use std::path::{Path, PathBuf};

#[derive(Subcommand)]
pub enum TorrentCommand {
    /// Print what a .torrent holds: name, info-hash, sizes, pieces, files, trackers.
    Show {
        file: PathBuf,
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Create a .torrent from a file or a directory.
    Create(CreateArgs),
    /// Print the torrent's magnet link (info-hash, name, trackers, web seeds).
    Magnet { file: PathBuf },
}

#[derive(Args)]
pub struct CreateArgs {
    /// The file or directory to share.
    path: PathBuf,
    /// Where to write the .torrent (default: NAME.torrent here, NAME the file's or directory's).
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// Replace the output file if it exists (without it, an existing file is an error,
    /// found before anything is hashed).
    #[arg(short, long)]
    force: bool,
    /// Bytes per piece: a power of two from 16384 up to 128 MiB (default: picked from the size).
    #[arg(long, value_parser = parse_piece_length)]
    piece_length: Option<u64>,
    /// Tracker announce URL; repeat for more tiers; URLs joined by commas share one tier.
    #[arg(long = "tracker", short = 't')]
    trackers: Vec<String>,
    /// Web seed URL (BEP 19); repeatable.
    #[arg(long = "web-seed", short = 'w')]
    web_seeds: Vec<String>,
    /// DHT node for users of the torrent to bootstrap from (BEP 5 `nodes`), HOST:PORT;
    /// repeatable.
    #[arg(long = "dht-node", value_name = "HOST:PORT", value_parser = parse_host_port)]
    dht_nodes: Vec<(String, u16)>,
    /// Mark the torrent private (BEP 27): peers only from its trackers.
    #[arg(short, long)]
    private: bool,
    /// A tag in the info dictionary (`source`, as mktorrent's and transmission-create's), often
    /// a private tracker's: the same files get a different info-hash.
    #[arg(long)]
    source: Option<String>,
    /// The torrent's name (default: the file's or directory's name).
    #[arg(short, long)]
    name: Option<String>,
    /// A comment for people who read the torrent (`comment`).
    #[arg(short, long)]
    comment: Option<String>,
    /// Leave out the creation date, so the same input always gives the same file.
    #[arg(long)]
    no_date: bool,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

fn parse_host_port(text: &str) -> Result<(String, u16), String> {
    let (host, port) = text
        .rsplit_once(':')
        .ok_or_else(|| format!("`{text}` is not HOST:PORT"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    match port.parse::<u16>() {
        Ok(port) if port != 0 && !host.is_empty() => Ok((host.to_string(), port)),
        _ => Err(format!(
            "`{text}` is not HOST:PORT (a port from 1 to 65535)"
        )),
    }
}

/// Warns of each tracker URL in `tiers` that pow itself cannot announce to (a WebTorrent `wss`
/// tracker, user info, a UDP URL without a port): other clients may, so the torrent keeps it.
pub(crate) fn warn_of_trackers_pow_cannot_use(tiers: &[Vec<String>]) {
    for url in tiers.iter().flatten() {
        if let Err(e) = pow_tracker::TrackerUrl::parse(url) {
            eprintln!(
                "pow: warning: pow cannot announce to this tracker, though other clients may: {e}"
            );
        }
    }
}

/// A `--piece-length` value (also `pow publish`'s).
pub(crate) fn parse_piece_length(text: &str) -> Result<u64, String> {
    let value: u64 = text
        .parse()
        .map_err(|_| format!("'{text}' is not a number"))?;
    if value < 16384 || !value.is_power_of_two() || value > 128 * 1024 * 1024 {
        return Err(format!(
            "{value} is not a power of two from 16384 to 134217728"
        ));
    }
    Ok(value)
}

pub fn run(command: TorrentCommand) -> CmdResult {
    match command {
        TorrentCommand::Magnet { file } => {
            println!(
                "{}",
                pow_metainfo::magnet_link(&Metainfo::from_file(&file)?)
            );
            Ok(())
        }
        TorrentCommand::Show { file, json } => {
            let metainfo = Metainfo::from_file(&file)?;
            if json {
                print_json(&to_json(&metainfo))?;
            } else {
                print_text(&metainfo);
            }
            Ok(())
        }
        TorrentCommand::Create(args) => create_cmd(args),
    }
}

fn create_cmd(args: CreateArgs) -> CmdResult {
    let options = CreateOptions {
        piece_length: args.piece_length,
        trackers: args
            .trackers
            .iter()
            .map(|tier| tier.split(',').map(|u| u.trim().to_string()).collect())
            .collect(),
        web_seeds: args.web_seeds,
        dht_nodes: args.dht_nodes,
        private: args.private,
        source: args.source,
        name: args.name,
        comment: args.comment,
        creation_date: (!args.no_date).then(unix_now),
        created_by: None,
        threads: None,
    };
    check_options(&options)?;
    warn_of_trackers_pow_cannot_use(&options.trackers);
    let output = match (args.output, &options.name) {
        (Some(output), _) => output,
        (None, Some(name)) => PathBuf::from(format!("{name}.torrent")),
        (None, None) => PathBuf::from(format!("{}.torrent", content_name(&args.path)?)),
    };
    // Before hashing, which can take minutes: not over a file unless told, never over the input,
    // never inside a shared directory (its next torrent would hash this one).
    if args.path.is_dir() && inside(&output, &args.path) {
        return Err(format!(
            "{} is inside {}, the directory shared: write the torrent elsewhere (-o)",
            output.display(),
            args.path.display()
        )
        .into());
    }
    if output.is_dir() {
        // --force could not replace it either: it failed after all the hashing.
        return Err(format!(
            "{}: is a directory; give -o the torrent file's path (e.g. {}/{}.torrent)",
            output.display(),
            output.display(),
            args.path
                .file_name()
                .map_or("out".into(), |n| n.to_string_lossy())
        )
        .into());
    }
    if output.exists() {
        let same = |a: &Path, b: &Path| matches!((std::fs::canonicalize(a), std::fs::canonicalize(b)), (Ok(a), Ok(b)) if a == b);
        if same(&output, &args.path) {
            return Err(format!("{}: the output is the file to share", output.display()).into());
        }
        if !args.force {
            return Err(format!("{} exists; give --force to replace it", output.display()).into());
        }
    }
    let content = Content::scan(&args.path)?;
    let created = crate::seed_cmd::with_piece_bar(
        "hashing",
        content.piece_count(&options),
        args.json,
        |hashed| create_with_progress(&content, &options, hashed),
    )?;
    write_torrent(&output, &created.bytes, args.force)?;
    let m = &created.metainfo;
    if args.json {
        let mut value = to_json(m);
        value.torrent_file = Some(output.display().to_string());
        print_json(&value)?;
    } else {
        println!("{}", output.display());
        println!("info_hash {}", m.info_hash);
        println!(
            "{} bytes, {} pieces of {} bytes, {} file(s)",
            m.total_length(),
            m.geometry.piece_count(),
            m.geometry.piece_length(),
            m.files.len()
        );
    }
    Ok(())
}

/// Whether `path` (which may not exist yet) lies under directory `dir`, both by real paths.
fn inside(path: &Path, dir: &Path) -> bool {
    let Ok(dir) = std::fs::canonicalize(dir) else {
        return false;
    };
    let Ok(path) = std::path::absolute(path) else {
        return false;
    };
    // The nearest part of the path that exists, resolved; the rest appended.
    let mut existing = path.as_path();
    let mut rest = Vec::new();
    while !existing.exists() {
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_owned());
                existing = parent;
            }
            _ => return false,
        }
    }
    let Ok(mut real) = std::fs::canonicalize(existing) else {
        return false;
    };
    real.extend(rest.iter().rev());
    real.starts_with(&dir)
}

/// The name a torrent of `path` gets (its last component, also for `.` and `..`).
fn content_name(path: &Path) -> Result<String, Box<dyn std::error::Error>> {
    Ok(pow_metainfo::create::content_name(path)?)
}

/// Writes the .torrent as the torrent stores do (temp file, fsync, rename), so a crash never
/// leaves half of one behind; unless `replace`, never over a file that appeared meanwhile.
fn write_torrent(
    path: &Path,
    bytes: &[u8],
    replace: bool,
) -> Result<(), Box<dyn std::error::Error>> {
    let name = path
        .file_name()
        .ok_or_else(|| format!("{}: names no file", path.display()))?
        .to_str()
        .ok_or_else(|| format!("{}: the file name is not UTF-8", path.display()))?;
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    if replace {
        return Ok(write_atomically(dir, name, bytes)?);
    }
    match write_new(dir, name, bytes)? {
        true => Ok(()),
        false => Err(format!("{} exists; give --force to replace it", path.display()).into()),
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// A torrent as `--json` prints it. Serialized straight to the output, file by file: a
/// `serde_json::Value` of a torrent of 100,000 files took 313 MB. Fields in the order of
/// their names, as a `Value` (a sorted map) printed them.
#[derive(serde::Serialize)]
pub struct TorrentJson<'a> {
    announce: &'a Option<String>,
    announce_list: &'a Vec<Vec<String>>,
    comment: &'a Option<String>,
    created_by: &'a Option<String>,
    creation_date: &'a Option<i64>,
    dht_nodes: &'a Vec<String>,
    files: FilesJson<'a>,
    http_seeds: &'a Vec<String>,
    hybrid_v2: bool,
    info_hash: String,
    last_piece_length: u32,
    multi_file: bool,
    name: &'a str,
    piece_count: u32,
    piece_length: u32,
    private: bool,
    source: &'a Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    torrent_file: Option<String>,
    total_length: u64,
    trackers: Vec<Vec<String>>,
    url_list: &'a Vec<String>,
}

/// The files, each serialized when its turn comes.
pub struct FilesJson<'a>(&'a [pow_metainfo::FileEntry]);

impl serde::Serialize for FilesJson<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(serde::Serialize)]
        struct FileJson<'a> {
            disk_path: Vec<&'a str>,
            executable: bool,
            hidden: bool,
            length: u64,
            offset: u64,
            pad: bool,
            path: Vec<String>,
            symlink: Option<Vec<&'a str>>,
        }
        serializer.collect_seq(self.0.iter().map(|f| FileJson {
            disk_path: f.path.components().collect(),
            executable: f.attr.executable,
            hidden: f.attr.hidden,
            length: f.length,
            offset: f.offset,
            pad: f.attr.pad,
            path: f.raw_path_lossy(),
            symlink: f.symlink_target.as_ref().map(|t| t.components().collect()),
        }))
    }
}

pub fn to_json(m: &Metainfo) -> TorrentJson<'_> {
    TorrentJson {
        announce: &m.announce,
        announce_list: &m.announce_list,
        comment: &m.comment,
        created_by: &m.created_by,
        creation_date: &m.creation_date,
        dht_nodes: &m.dht_nodes,
        files: FilesJson(&m.files),
        http_seeds: &m.http_seeds,
        hybrid_v2: m.hybrid,
        info_hash: m.info_hash.to_hex(),
        last_piece_length: m.geometry.last_piece_size(),
        multi_file: m.multi_file,
        name: &m.name,
        piece_count: m.geometry.piece_count(),
        piece_length: m.geometry.piece_length(),
        private: m.private,
        source: &m.source,
        torrent_file: None,
        total_length: m.total_length(),
        trackers: m.tracker_tiers(),
        url_list: &m.url_list,
    }
}

/// Prints `value` as indented JSON and a newline, written out as it is serialized.
fn print_json(value: &impl serde::Serialize) -> Result<(), Box<dyn std::error::Error>> {
    use std::io::Write;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    serde_json::to_writer_pretty(&mut out, value)?;
    writeln!(out)?;
    out.flush()?;
    Ok(())
}

fn print_text(m: &Metainfo) {
    println!("name:         {}", m.name);
    println!("info_hash:    {}", m.info_hash);
    println!(
        "size:         {} bytes in {} file(s)",
        m.total_length(),
        m.files.len()
    );
    println!(
        "pieces:       {} x {} bytes (last {})",
        m.geometry.piece_count(),
        m.geometry.piece_length(),
        m.geometry.last_piece_size()
    );
    if let Some(source) = &m.source {
        println!("source:       {source}");
    }
    if m.private {
        println!("private:      yes");
    }
    if let Some(comment) = &m.comment {
        println!("comment:      {comment}");
    }
    if let Some(by) = &m.created_by {
        println!("created by:   {by}");
    }
    if let Some(date) = m.creation_date {
        println!("created:      {date} (unix time)");
    }
    let tiers = m.tracker_tiers();
    if tiers.is_empty() {
        println!("trackers:     none");
    }
    for (i, tier) in tiers.iter().enumerate() {
        println!("tracker tier {i}: {}", tier.join(" "));
    }
    for seed in &m.url_list {
        println!("web seed:     {seed}");
    }
    for node in &m.dht_nodes {
        println!("dht node:     {node}");
    }
    println!("files:");
    for f in &m.files {
        let pad = if f.attr.pad { " (pad)" } else { "" };
        println!("  {:>14}  {}{pad}", f.length, f.path);
    }
}
