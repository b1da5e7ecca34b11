//! Test hook: when `POW_TRACE_VERIFIED` names a file, one line per event is appended to it
//! (`start ...` from the CLI, `verified <piece>` here). A process killed with SIGKILL prints no
//! summary, so crash tests read this instead. Unset (the normal case) it costs one check.

use std::io::Write;
use std::path::PathBuf;
use std::sync::OnceLock;

pub const ENV: &str = "POW_TRACE_VERIFIED";

fn path() -> Option<&'static PathBuf> {
    static PATH: OnceLock<Option<PathBuf>> = OnceLock::new();
    PATH.get_or_init(|| std::env::var_os(ENV).map(PathBuf::from))
        .as_ref()
}

/// Appends `line` to the trace file, if tracing is on. One `write` per line (O_APPEND), so a
/// line is whole in the file as soon as this returns, whatever happens to the process next.
pub fn event(line: &str) {
    let Some(path) = path() else {
        return;
    };
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut f| f.write_all(format!("{line}\n").as_bytes()));
    if let Err(e) = written {
        tracing::warn!("{ENV}={}: {e}", path.display());
    }
}
