//! Reading what `pow download` leaves behind for the crash tests: the `POW_TRACE_VERIFIED`
//! file (`engine::trace`) and the have-set a resume file claims; and the replayable random
//! source that picks their kill moments.

use std::collections::HashSet;
use std::path::Path;

/// One run of `pow download` as seen in the trace.
#[derive(Default, Debug)]
pub struct Run {
    /// Where the run's starting set came from (`none`, `file`, `full-check`).
    pub source: String,
    /// The pieces it started with.
    pub start: HashSet<u32>,
    /// The pieces it verified, in order.
    pub verified: Vec<u32>,
}

/// Every run in a trace file, oldest first (none when the file does not exist yet).
///
/// A record still being appended is left out: a read racing the writer's one `write` can see
/// the file grown by part of it (the kernel updates the size page by page; a `start` record of
/// a 1,000-piece torrent is 320 bytes and can cross a page), and CI once failed on such a
/// half `start` line (its hex cut to an odd length).
pub fn parse_trace(path: &Path) -> Vec<Run> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let whole = text.rfind('\n').map_or("", |end| &text[..=end]);
    let mut runs: Vec<Run> = Vec::new();
    for line in whole.lines() {
        match line.split_whitespace().collect::<Vec<_>>()[..] {
            ["start", source, _count, have] => runs.push(Run {
                source: source.to_string(),
                start: bits(&hex::decode(have).unwrap()),
                verified: Vec::new(),
            }),
            ["verified", piece] => runs
                .last_mut()
                .expect("start comes first")
                .verified
                .push(piece.parse().unwrap()),
            _ => panic!("unexpected trace line {line:?}"),
        }
    }
    runs
}

/// Set bits of a wire-order bitfield.
pub fn bits(bytes: &[u8]) -> HashSet<u32> {
    (0..bytes.len() as u32 * 8)
        .filter(|i| bytes[(i / 8) as usize] & (0x80 >> (i % 8)) != 0)
        .collect()
}

/// Pieces the resume file claims (empty when there is none yet).
pub fn resume_claims(path: &Path) -> HashSet<u32> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return HashSet::new();
    };
    let have = text
        .lines()
        .find_map(|l| l.strip_prefix("have "))
        .expect("have line");
    bits(&hex::decode(have).unwrap())
}

/// xorshift64*: enough randomness for kill moments without a dependency.
pub struct Rng(pub u64);
impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}
