//! What a node keeps between runs: its id (BEP 5 asks a node to keep it, so the nodes that
//! know it find it where they left it) and the addresses of nodes that answered it lately, to
//! start from next time instead of the routers alone. A short text file, written whole to a
//! temporary name and renamed, so a killed process leaves the old file or the new one.

use crate::krpc::Id;
use std::net::SocketAddr;
use std::path::Path;

const HEADER: &str = "pow dht state 1";
/// Node addresses kept: enough to find the network again after many have left it.
pub const MAX_SAVED_NODES: usize = 200;

/// A node's saved id and nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Saved {
    pub id: Id,
    pub nodes: Vec<SocketAddr>,
}

/// Reads `path`: `None` when there is no file; an error names what is wrong with one that
/// is not a state file. Lines it does not know are skipped.
pub fn load(path: &Path) -> std::io::Result<Option<Saved>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let invalid = |what: &str| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{}: {what}", path.display()),
        )
    };
    let mut lines = text.lines();
    if lines.next() != Some(HEADER) {
        return Err(invalid("not a pow DHT state file"));
    }
    let mut id = None;
    let mut nodes = Vec::new();
    for line in lines {
        match line.split_once(' ') {
            Some(("id", hex)) => id = parse_id(hex),
            Some(("node", addr)) => {
                if let Ok(addr) = addr.parse() {
                    if nodes.len() < MAX_SAVED_NODES {
                        nodes.push(addr);
                    }
                }
            }
            _ => {}
        }
    }
    let id = id.ok_or_else(|| invalid("no node id"))?;
    Ok(Some(Saved { id, nodes }))
}

/// Writes `saved` to `path` (creating its directory), replacing what was there.
pub fn save(path: &Path, saved: &Saved) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut text = format!("{HEADER}\nid {}\n", hex(&saved.id));
    for node in saved.nodes.iter().take(MAX_SAVED_NODES) {
        text.push_str(&format!("node {node}\n"));
    }
    // Named per process: two pow processes sharing the default state file must not write
    // into one temporary file (the rename would then install a mix of both).
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(format!(".{}.tmp", std::process::id()));
    std::fs::write(&temporary, text)?;
    std::fs::rename(&temporary, path)
}

fn hex(id: &Id) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

fn parse_id(hex: &str) -> Option<Id> {
    if hex.len() != 40 || !hex.is_ascii() {
        return None;
    }
    let mut id = [0u8; 20];
    for (i, byte) in id.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_saved_state_reads_back_and_bad_files_are_named() {
        let dir = std::env::temp_dir().join(format!("pow-dht-state-{}", std::process::id()));
        let path = dir.join("sub").join("dht-state");
        assert_eq!(load(&path).unwrap(), None);
        let saved = Saved {
            id: [0xab; 20],
            nodes: vec![
                "127.0.0.1:6881".parse().unwrap(),
                "10.0.0.2:1".parse().unwrap(),
            ],
        };
        save(&path, &saved).unwrap();
        assert_eq!(load(&path).unwrap(), Some(saved));
        // Unknown and malformed lines are skipped.
        let text = format!(
            "{HEADER}\nid {}\nnode nonsense\nfuture 1\nnode 1.2.3.4:5\n",
            "0f".repeat(20)
        );
        std::fs::write(&path, text).unwrap();
        let read = load(&path).unwrap().unwrap();
        assert_eq!((read.id, read.nodes.len()), ([0x0f; 20], 1));
        std::fs::write(&path, "something else\n").unwrap();
        let error = load(&path).unwrap_err().to_string();
        assert!(error.contains("not a pow DHT state file"), "{error}");
        std::fs::write(&path, format!("{HEADER}\nid xyz\n")).unwrap();
        assert!(load(&path).unwrap_err().to_string().contains("no node id"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
