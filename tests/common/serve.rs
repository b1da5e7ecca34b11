//! `pow serve` driven as a user would: the process on loopback in its own data dir, its JSON
//! API, and upload bodies as a browser sends them.

use super::{http_get, pow_bin};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `pow serve` on loopback, on ports the system picks (printed as JSON), its tracker at
/// `tracker_listen`; the data dir is the caller's to give.
pub fn serve_command(tracker_listen: &str) -> Command {
    let mut command = Command::new(pow_bin());
    command
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--peer-port",
            "0",
            "--json",
        ])
        .args(["--tracker-listen", tracker_listen]);
    command
}

/// `pow serve` on loopback in its own data dir, killed with SIGKILL when dropped.
pub struct Server {
    pub child: Child,
    pub url: String,
    pub addr: String,
    pub data: PathBuf,
    pub datasets_at_start: u64,
    pub peer_port: u16,
}

impl Server {
    /// Starts with a fixed tracker port (the torrents name it, so a restart must keep it).
    pub fn start(data: &Path, tracker_port: u16, extra: &[&str]) -> Server {
        Self::start_with_tracker(data, &format!("127.0.0.1:{tracker_port}"), extra)
    }

    /// As [`Server::start`], its tracker listening at `tracker_listen`.
    pub fn start_with_tracker(data: &Path, tracker_listen: &str, extra: &[&str]) -> Server {
        let mut child = serve_command(tracker_listen)
            .arg("--data")
            .arg(data)
            .args(extra)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let line = super::first_stdout_line(&mut child);
        let json: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
        let url = json["url"].as_str().unwrap().to_string();
        Server {
            child,
            addr: url.trim_start_matches("http://").to_string(),
            url,
            data: data.to_path_buf(),
            datasets_at_start: json["datasets"].as_u64().unwrap(),
            peer_port: json["peer_port"].as_u64().unwrap() as u16,
        }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn datasets(&self) -> Vec<serde_json::Value> {
        let body = http_get(format!("{}/api/datasets", self.url))
            .unwrap()
            .text()
            .unwrap();
        serde_json::from_str::<Vec<serde_json::Value>>(&body).unwrap()
    }

    pub fn dataset(&self, md5: &str) -> Option<serde_json::Value> {
        self.datasets().into_iter().find(|d| d["md5"] == md5)
    }

    /// Waits until the dataset is listed as seeding every piece.
    pub fn wait_seeding(&self, md5: &str) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(d) = self.dataset(md5) {
                if d["status"]["seeding"] == true {
                    assert_eq!(d["status"]["pieces_have"], d["status"]["pieces_total"]);
                    return d;
                }
            }
            assert!(
                Instant::now() < deadline,
                "{md5} never seeded: {:?}",
                self.dataset(md5)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The names in a folder of the data dir, sorted (none when it does not exist).
    pub fn files_in(&self, sub: &str) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.data.join(sub))
            .map(|d| {
                d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    /// Waits until every listed dataset seeds every piece; returns their MD5s.
    pub fn wait_all_seeding(&self) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let sets = self.datasets();
            if sets.iter().all(|d| d["status"]["seeding"] == true) {
                for d in &sets {
                    assert_eq!(d["status"]["pieces_have"], d["status"]["pieces_total"]);
                }
                let mut md5s: Vec<String> = sets
                    .iter()
                    .map(|d| d["md5"].as_str().unwrap().to_string())
                    .collect();
                md5s.sort();
                return md5s;
            }
            assert!(Instant::now() < deadline, "not all seeding: {sets:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A multipart/form-data body with one file field and an optional description.
pub fn form(file_name: &str, bytes: &[u8], description: Option<&str>) -> (String, Vec<u8>) {
    let boundary = format!("----pow{:016x}", rand_u64());
    let mut body = Vec::new();
    if let Some(d) = description {
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"description\"\r\n\r\n{d}\r\n"
            )
            .as_bytes(),
        );
    }
    body.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{file_name}\"\r\n\
             Content-Type: application/zip\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(bytes);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

pub fn rand_u64() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    nanos ^ (std::process::id() as u64) << 32
}
