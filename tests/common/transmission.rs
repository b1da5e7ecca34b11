//! transmission-daemon driven over its RPC for tests that need settings the swarm lab does
//! not give (encryption required, uTP on).

use super::{free_port, text, Killed};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// transmission-daemon 3.00, RPC on its own port, given `torrent` to seed from or download
/// into `dir`, with `settings` over the defaults below (no uTP, encryption preferred off).
/// Killed when dropped.
pub struct Transmission {
    _daemon: Killed,
    rpc: String,
}

impl Transmission {
    pub fn start(
        work: &Path,
        torrent: &Path,
        dir: &Path,
        seed: bool,
        settings: &[(&str, i64)],
    ) -> Transmission {
        let conf = work.join(if seed { "tr-seed" } else { "tr-leech" });
        std::fs::create_dir_all(&conf).unwrap();
        std::fs::create_dir_all(dir).unwrap();
        let rpc_port = free_port();
        let mut defaults = serde_json::json!({
            "bind-address-ipv4": "127.0.0.1", "bind-address-ipv6": "::1",
            "rpc-enabled": true, "rpc-bind-address": "127.0.0.1", "rpc-port": rpc_port,
            "rpc-authentication-required": false, "rpc-whitelist-enabled": true,
            "rpc-whitelist": "127.0.0.1", "rpc-host-whitelist-enabled": false,
            "peer-port": free_port(), "peer-port-random-on-start": false,
            "port-forwarding-enabled": false, "dht-enabled": false, "lpd-enabled": false,
            "pex-enabled": false, "utp-enabled": false, "blocklist-enabled": false,
            "encryption": 0,
            "download-dir": dir, "incomplete-dir-enabled": false, "watch-dir-enabled": false,
            "ratio-limit-enabled": false, "idle-seeding-limit-enabled": false,
            "download-queue-enabled": false, "seed-queue-enabled": false,
            "rename-partial-files": false, "start-added-torrents": true, "message-level": 2,
        });
        for (key, value) in settings {
            defaults[*key] = if *key == "utp-enabled" {
                serde_json::Value::Bool(*value != 0)
            } else {
                serde_json::Value::from(*value)
            };
        }
        std::fs::write(conf.join("settings.json"), defaults.to_string()).unwrap();
        let daemon = Killed(
            Command::new("transmission-daemon")
                .arg("-f")
                .arg("-g")
                .arg(&conf)
                .arg("-e")
                .arg(conf.join("transmission.log"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("transmission-daemon (scripts/install-deps --tests)"),
        );
        let rpc = format!("127.0.0.1:{rpc_port}");
        let transmission = Transmission {
            _daemon: daemon,
            rpc,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !transmission.remote(&["-l"]).0 {
            assert!(
                Instant::now() < deadline,
                "transmission-daemon RPC did not come up"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let add =
            transmission.remote(&["-a", torrent.to_str().unwrap(), "-w", dir.to_str().unwrap()]);
        assert!(add.0, "transmission-remote -a: {}", add.1);
        if seed {
            transmission.remote(&["-t", "all", "-v"]);
        }
        transmission
    }

    pub fn remote(&self, args: &[&str]) -> (bool, String) {
        let o = Command::new("transmission-remote")
            .arg(&self.rpc)
            .args(args)
            .output()
            .unwrap();
        (o.status.success(), text(&o.stdout) + &text(&o.stderr))
    }

    /// Waits until the torrent is complete (and, for a seed, seeding).
    pub fn wait_done(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let (_, info) = self.remote(&["-t", "all", "-i"]);
            if info.contains("Percent Done: 100%")
                && (info.contains("State: Seeding") || info.contains("State: Idle"))
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "transmission did not finish: {info}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}
