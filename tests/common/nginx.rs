//! nginx (Debian `nginx-light`, installed by `scripts/install-deps --tests`) on 127.0.0.1 with a
//! minimal config: static files under a root (206 answers to `Range:` are nginx's own), over
//! plain HTTP or TLS, optionally proxying locations to a local HTTP service. Stopped when
//! dropped; its access log counts requests. Plus [`TestCa`]: a private CA and a server
//! certificate for 127.0.0.1 made with the `openssl` command line.

use super::free_port;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Nginx {
    child: Child,
    pub port: u16,
    scheme: &'static str,
    log: PathBuf,
}

/// A private certificate authority (`ca.pem`) and a server certificate it signed for
/// 127.0.0.1 and localhost (`server.pem`, `server.key`), in one directory.
pub struct TestCa {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TestCa {
    pub fn create(dir: &Path) -> TestCa {
        std::fs::create_dir_all(dir).unwrap();
        let openssl = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(dir)
                .output()
                .expect("openssl (scripts/install-deps --tests)");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        openssl(
            &[
                &["req", "-x509"][..],
                &ec,
                &["-keyout", "ca.key", "-out", "ca.pem"],
                &["-days", "2", "-subj", "/CN=pow test CA"],
            ]
            .concat(),
        );
        openssl(
            &[
                &["req"][..],
                &ec,
                &["-keyout", "server.key", "-out", "server.csr"],
                &[
                    "-subj",
                    "/CN=127.0.0.1",
                    "-addext",
                    "subjectAltName=IP:127.0.0.1,DNS:localhost",
                ],
            ]
            .concat(),
        );
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-copy_extensions",
            "copy",
        ]);
        TestCa {
            ca: dir.join("ca.pem"),
            cert: dir.join("server.pem"),
            key: dir.join("server.key"),
        }
    }
}

impl Nginx {
    /// Serves `root` over plain HTTP.
    pub fn start(prefix: &Path, root: &Path) -> Nginx {
        Nginx::start_with(prefix, root, None, &[])
    }

    /// Serves `root` over TLS with `ca`'s server certificate; each `(location, port)` of
    /// `proxied` is passed to `http://127.0.0.1:port` instead.
    pub fn start_tls(prefix: &Path, root: &Path, ca: &TestCa, proxied: &[(&str, u16)]) -> Nginx {
        Nginx::start_with(prefix, root, Some(ca), proxied)
    }

    fn start_with(
        prefix: &Path,
        root: &Path,
        tls: Option<&TestCa>,
        proxied: &[(&str, u16)],
    ) -> Nginx {
        let port = free_port();
        std::fs::create_dir_all(prefix.join("tmp")).unwrap();
        let log = prefix.join("access.log");
        let conf = prefix.join("nginx.conf");
        let p = prefix.display();
        let listen = match tls {
            Some(ca) => format!(
                "listen 127.0.0.1:{port} ssl; ssl_certificate {}; ssl_certificate_key {};",
                ca.cert.display(),
                ca.key.display()
            ),
            None => format!("listen 127.0.0.1:{port};"),
        };
        let locations: String = proxied
            .iter()
            .map(|(location, to)| {
                format!("location {location} {{ proxy_pass http://127.0.0.1:{to}; }}\n")
            })
            .collect();
        std::fs::write(
            &conf,
            format!(
                "daemon off; master_process off; worker_processes 1; pid {p}/nginx.pid;\n\
                 error_log {p}/error.log;\n\
                 events {{ worker_connections 64; }}\n\
                 http {{\n\
                   access_log {p}/access.log;\n\
                   client_body_temp_path {p}/tmp/body; proxy_temp_path {p}/tmp/proxy;\n\
                   fastcgi_temp_path {p}/tmp/fastcgi; uwsgi_temp_path {p}/tmp/uwsgi;\n\
                   scgi_temp_path {p}/tmp/scgi;\n\
                   server {{ {listen} root {};\n{locations} }}\n\
                 }}\n",
                root.display()
            ),
        )
        .unwrap();
        let child = Command::new("/usr/sbin/nginx")
            .arg("-p")
            .arg(prefix)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("nginx (Debian nginx-light: scripts/install-deps --tests)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "nginx did not start on {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
        let scheme = if tls.is_some() { "https" } else { "http" };
        Nginx {
            child,
            port,
            scheme,
            log,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}://127.0.0.1:{}{path}", self.scheme, self.port)
    }

    /// The access log's lines.
    pub fn requests(&self) -> Vec<String> {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        log.lines().map(str::to_string).collect()
    }

    /// Requests nginx answered with 206 Partial Content (and all it logged).
    pub fn partial_responses(&self) -> (usize, usize) {
        let log = self.requests();
        let partial = log.iter().filter(|l| l.contains("\" 206 ")).count();
        (partial, log.len())
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
