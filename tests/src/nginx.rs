//! nginx for the end-to-end tests and `cargo xtask bench`: one configuration, written into a
//! temporary directory, nginx in the foreground (`daemon off`, one worker) in its own process
//! group, stopped with its worker when dropped.
//!
//! It serves `html/` (the files given to [`Nginx::start`]) plus `/items/<anything>` (200) and
//! `/error` (500), over plain HTTP, TLS, or both.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::process::Proc;
use crate::tls::Certs;
use crate::{free_port, TempDir};

/// How long nginx may take to listen.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(30);

/// What an nginx listens on and how it is tuned.
pub struct Config<'a> {
    /// Plain HTTP on a free port.
    pub http: bool,
    /// HTTPS on a free port with this certificate, and only these protocols
    /// (`"TLSv1.2 TLSv1.3"`; `None`: nginx's default).
    pub tls: Option<(&'a Certs, Option<&'a str>)>,
    /// Tuned for load (`cargo xtask bench`): more connections, 100,000 requests per connection.
    pub load: bool,
    /// HTTP/2 on both ports: h2c with prior knowledge on the plain one, ALPN `h2` on the TLS one.
    pub http2: bool,
}

/// A running nginx.
pub struct Nginx {
    pub proc: Proc,
    /// The plain HTTP port, if asked for.
    pub port: Option<u16>,
    /// The HTTPS port, if asked for.
    pub tls_port: Option<u16>,
    /// Its prefix: `nginx.conf`, `html/`, `error.log`. Dropped after the process.
    pub dir: TempDir,
}

impl Nginx {
    /// Writes `files` (name, content) under `html/`, starts nginx and waits until every port
    /// listens; panics with its error log if it does not.
    pub fn start(files: &[(&str, &str)], config: &Config<'_>) -> Nginx {
        let dir = TempDir::new("nginx");
        let html = dir.join("html");
        std::fs::create_dir_all(&html).expect("create html");
        for (name, content) in files {
            std::fs::write(html.join(name), content)
                .unwrap_or_else(|e| panic!("write html/{name}: {e}"));
        }
        let port = config.http.then(free_port);
        let tls_port = config.tls.is_some().then(free_port);
        let conf = dir.join("nginx.conf");
        std::fs::write(
            &conf,
            nginx_conf(
                dir.path(),
                port,
                tls_port.zip(config.tls),
                config.load,
                config.http2,
            ),
        )
        .expect("write nginx.conf");
        let binary = if Path::new("/usr/sbin/nginx").is_file() {
            PathBuf::from("/usr/sbin/nginx")
        } else {
            PathBuf::from("nginx")
        };
        let mut cmd = Command::new(binary);
        cmd.arg("-p")
            .arg(dir.path())
            .arg("-e")
            .arg(dir.join("error.log"))
            .arg("-c")
            .arg(&conf);
        let mut proc = Proc::spawn("nginx", &mut cmd);
        for port in port.iter().chain(&tls_port) {
            proc.wait_listening(
                SocketAddr::from(([127, 0, 0, 1], *port)),
                LISTEN_TIMEOUT,
                Some(&dir.join("error.log")),
            );
        }
        Nginx {
            proc,
            port,
            tls_port,
            dir,
        }
    }

    /// Its state and output, with the end of its error log.
    pub fn describe(&mut self) -> String {
        let log = std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default();
        format!("{}\n{}", self.proc.describe(), crate::tail(&log, 20))
    }
}

/// The configuration: one worker kept as root (so that it reads the temporary directory),
/// access log off, a server per port.
fn nginx_conf(
    dir: &Path,
    port: Option<u16>,
    tls: Option<(u16, (&Certs, Option<&str>))>,
    load: bool,
    http2: bool,
) -> String {
    let h2 = if http2 { " http2" } else { "" };
    let d = dir.display();
    let (connections, requests) = if load { (1024, 100_000) } else { (256, 1000) };
    let locations = "        location = /error { return 500 \"boom\\n\"; }
        location /items/ { return 200 \"item\\n\"; }
        location / { try_files $uri =404; }";
    let mut servers = String::new();
    if let Some(port) = port {
        servers.push_str(&format!("    server {{\n        listen 127.0.0.1:{port}{h2};\n        root {d}/html;\n{locations}\n    }}\n"));
    }
    if let Some((port, (certs, protocols))) = tls {
        let protocols = protocols
            .map(|p| format!("        ssl_protocols {p};\n"))
            .unwrap_or_default();
        servers.push_str(&format!(
            "    server {{\n        listen 127.0.0.1:{port} ssl{h2};\n        ssl_certificate {};\n        ssl_certificate_key {};\n{protocols}        root {d}/html;\n{locations}\n    }}\n",
            certs.cert.display(),
            certs.key.display()
        ));
    }
    format!(
        "daemon off;
master_process on;
worker_processes 1;
user root;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections {connections}; }}
http {{
    access_log off;
    default_type text/plain;
    client_body_temp_path {d}/tmp_body;
    proxy_temp_path {d}/tmp_proxy;
    fastcgi_temp_path {d}/tmp_fastcgi;
    uwsgi_temp_path {d}/tmp_uwsgi;
    scgi_temp_path {d}/tmp_scgi;
    keepalive_timeout 60s;
    keepalive_requests {requests};
{servers}}}
"
    )
}
