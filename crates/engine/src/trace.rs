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

/// Every record is padded with spaces to a multiple of this many bytes (a divisor of the page
/// size). SIGKILL can cut a `write` short only where it crosses a page boundary (the kernel
/// checks for a fatal signal between pages): a `verified` record was seen cut to `verifi`. With
/// every record starting at a multiple of 32, one of at most 32 bytes never crosses one.
const RECORD_ALIGN: usize = 32;

/// Appends `line` to the trace file, if tracing is on: one `write` per line (O_APPEND),
/// space-padded (see [`RECORD_ALIGN`]), so a `verified` line is whole in the file as soon as
/// this returns, whatever happens to the process next.
pub fn event(line: &str) {
    let Some(path) = path() else {
        return;
    };
    let mut record = line.to_string();
    let padded = (line.len() + 1).div_ceil(RECORD_ALIGN) * RECORD_ALIGN;
    record.extend(std::iter::repeat_n(' ', padded - line.len() - 1));
    record.push('\n');
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut f| f.write_all(record.as_bytes()));
    if let Err(e) = written {
        tracing::warn!("{ENV}={}: {e}", path.display());
    }
}
