//! The `pow` command-line tool: one subcommand module per concern, each a thin layer over a crate.
//!
//! Exit codes: 0 success, 2 bad usage (clap), 1 any other error with one line on stderr, 130
//! for `publish` and `source load` stopped by Ctrl-C/SIGTERM before they finished.

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// `println!` for the commands that run a swarm: they keep SIGPIPE ignored (a peer's closed
/// socket must not end them), so with their reader gone (`pow download --json | true`)
/// `println!` panicked, before the tracker was told `stopped`. The line is dropped instead.
macro_rules! report_line {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

mod announce;
mod dht_cmd;
mod dht_peers;
mod download_cmd;
mod load_cmd;
mod multiseed;
mod publish_cmd;
mod runtime;
mod seed_cmd;
mod serve_cmd;
mod source_cmd;
mod source_seed_cmd;
mod torrent_cmd;
mod tracker_cmd;

#[derive(Parser)]
#[command(
    name = "pow",
    version,
    about = "BitTorrent engine and verified data sources"
)]
struct Cli {
    /// The project directory (default: ./.pow).
    #[arg(long, global = true, env = "POW_DIR", value_name = "DIR")]
    pow_dir: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Read and create .torrent files.
    #[command(subcommand)]
    Torrent(torrent_cmd::TorrentCommand),
    /// Run a test tracker (--listen), or announce/scrape once (debugging).
    Tracker(tracker_cmd::TrackerArgs),
    /// Run a DHT node (node), or look an info-hash up once (lookup, debugging).
    #[command(subcommand)]
    Dht(dht_cmd::DhtCommand),
    /// Download a torrent's content, every piece verified.
    Download(download_cmd::DownloadArgs),
    /// Check a torrent's data on disk, then serve it to peers until interrupted.
    Seed(seed_cmd::SeedArgs),
    /// Check a torrent's data on disk piece by piece; exit 1 if any piece is bad or missing.
    Verify(seed_cmd::VerifyArgs),
    /// Create the .pow project directory (store, pow.toml, graphs/).
    Init,
    /// Save data source definitions (TOML or RDF) in one transaction.
    Save(source_cmd::SaveArgs),
    /// List, show and query stored data sources.
    #[command(subcommand)]
    Source(source_cmd::SourceCommand),
    /// Publish a dataset: torrent named by its MD5 into the torrent store, the data source
    /// record added or updated, then seed it until interrupted (--no-seed to skip).
    Publish(publish_cmd::PublishArgs),
    /// Run the upload server: a web page to publish zip datasets, an HTTP torrent store, and
    /// a seed (with a tracker) for everything published.
    Serve(serve_cmd::ServeArgs),
    /// List what a torrent store offers.
    #[command(subcommand)]
    Store(load_cmd::StoreCommand),
    /// Print the whole graph store, sorted (stable for git).
    Export(source_cmd::ExportArgs),
    /// Load an export (or any RDF file) into the store in one transaction.
    Import(source_cmd::ImportArgs),
}

/// Errors reach the user as one line: the message, then each cause after a colon.
type CmdResult = Result<(), Box<dyn std::error::Error>>;

/// Logs go to stderr; `POW_LOG` sets the level (error, warn, info, debug, trace). The default is
/// warn, except for the test tracker, whose job is to log each announce.
fn init_logging(default: tracing::Level) {
    let level = std::env::var("POW_LOG")
        .ok()
        .and_then(|l| l.parse::<tracing::Level>().ok())
        .unwrap_or(default);
    let _ = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Lets a command that prints its result and exits die of SIGPIPE, silently, when its reader
/// goes away (`pow export | head`), as `cat` does: Rust ignores SIGPIPE, which turns the failed
/// write into a panic in `println!`. The commands that talk to peers, trackers or browsers keep
/// ignoring it, so that a write to a closed connection is an error they handle, not their end.
fn die_quietly_when_stdout_closes(command: &Command) {
    let prints_and_exits = match command {
        Command::Torrent(_)
        | Command::Verify(_)
        | Command::Init
        | Command::Save(_)
        | Command::Store(_)
        | Command::Export(_)
        | Command::Import(_) => true,
        Command::Source(cmd) => !cmd.runs_a_swarm(),
        Command::Dht(cmd) => cmd.prints_and_exits(),
        Command::Tracker(_)
        | Command::Download(_)
        | Command::Seed(_)
        | Command::Publish(_)
        | Command::Serve(_) => false,
    };
    if prints_and_exits {
        // SAFETY: restoring the default disposition of one signal, before any thread starts.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
}

/// Lifts the soft limit of open files to the hard one, as Go programs and rqbit do: a torrent's
/// files are all open while it is created, checked or downloaded, and a dataset of a few
/// thousand files is past Debian's default soft limit of 1,024 (the hard one is far higher).
fn raise_open_file_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

fn main() -> ExitCode {
    // Set but empty, as shells leave a variable cleared with `POW_DIR=`: unset, as for every
    // other tool (clap took it for a missing value, and every command failed with usage).
    if std::env::var_os("POW_DIR").is_some_and(|v| v.is_empty()) {
        std::env::remove_var("POW_DIR"); // edition 2021: safe; no other thread runs yet
    }
    let cli = Cli::parse();
    die_quietly_when_stdout_closes(&cli.command);
    raise_open_file_limit();
    init_logging(match cli.command {
        Command::Tracker(_) => tracing::Level::INFO,
        _ => tracing::Level::WARN,
    });
    let result: CmdResult = match cli.command {
        Command::Torrent(cmd) => torrent_cmd::run(cmd),
        Command::Tracker(args) => tracker_cmd::run(args),
        Command::Dht(cmd) => dht_cmd::run(cmd),
        Command::Download(args) => download_cmd::run(args),
        Command::Seed(args) => seed_cmd::seed(args),
        Command::Verify(args) => seed_cmd::verify(args),
        Command::Init => source_cmd::init(cli.pow_dir.as_deref()),
        Command::Save(args) => source_cmd::save(cli.pow_dir.as_deref(), args),
        Command::Source(cmd) => source_cmd::source(cli.pow_dir.as_deref(), cmd),
        Command::Publish(args) => publish_cmd::publish(cli.pow_dir.as_deref(), args),
        Command::Serve(args) => serve_cmd::serve(cli.pow_dir.as_deref(), args),
        Command::Store(cmd) => load_cmd::store(cli.pow_dir.as_deref(), cmd),
        Command::Export(args) => source_cmd::export(cli.pow_dir.as_deref(), args),
        Command::Import(args) => source_cmd::import(cli.pow_dir.as_deref(), args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            let mut line = format!("pow: {err}");
            let mut source = err.source();
            while let Some(cause) = source {
                // Errors that name their cause in their own message are not repeated.
                let cause_text = cause.to_string();
                if !line.contains(&cause_text) {
                    line.push_str(&format!(": {cause_text}"));
                }
                source = cause.source();
            }
            eprintln!("{line}");
            ExitCode::from(1)
        }
    }
}
