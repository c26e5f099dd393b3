//! Real HTTP servers on loopback: Python's `http.server`, nginx, and the fixture server
//! (`tests/fixtures/http_fixture_server.py`) for special responses. Each is stopped on drop.

use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::process::Proc;
use crate::{fixture, free_port, free_port_v6, python, wait_until, TempDir};

/// How long a server may take to listen.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(20);

/// The body of `/hello` on the Python and nginx servers.
pub const HELLO_BODY: &str = "hello from ztrace e2e\n";

/// A server listening on a loopback address, stopped on drop.
pub struct Server {
    proc: Proc,
    /// `127.0.0.1` or `::1`.
    pub host: &'static str,
    pub port: u16,
    dir: TempDir,
}

impl Server {
    /// `python3 -m http.server PORT --bind HOST` serving a directory with `hello` and `index.html`.
    pub fn python_http(host: &'static str) -> Server {
        let dir = TempDir::new("http-server");
        std::fs::write(dir.join("hello"), HELLO_BODY).expect("write hello");
        std::fs::write(dir.join("index.html"), "<!doctype html><p>index</p>\n")
            .expect("write index");
        let port = port_for(host);
        let mut cmd = Command::new(python());
        cmd.args([
            "-u",
            "-m",
            "http.server",
            &port.to_string(),
            "--bind",
            host,
            "--directory",
        ])
        .arg(dir.path());
        let mut proc = Proc::spawn("python http.server", &mut cmd);
        proc.wait_for_stdout("Serving HTTP", LISTEN_TIMEOUT);
        Server {
            proc,
            host,
            port,
            dir,
        }
    }

    /// nginx (`daemon off`, one worker, keep-alive on) with `/hello` (static file), `/index.html`,
    /// `/items/<anything>` (200) and `/error` (500).
    pub fn nginx() -> Server {
        let dir = TempDir::new("nginx");
        let html = dir.join("html");
        std::fs::create_dir_all(&html).expect("create html");
        std::fs::write(html.join("hello"), HELLO_BODY).expect("write hello");
        std::fs::write(html.join("index.html"), "<!doctype html><p>index</p>\n")
            .expect("write index");
        let port = free_port();
        let conf = dir.join("nginx.conf");
        std::fs::write(&conf, nginx_conf(&dir, port)).expect("write nginx.conf");
        let binary = if std::path::Path::new("/usr/sbin/nginx").is_file() {
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
        wait_for_listen(&mut proc, "127.0.0.1", port, &dir);
        Server {
            proc,
            host: "127.0.0.1",
            port,
            dir,
        }
    }

    /// `tests/fixtures/http_fixture_server.py`: HTTP/1.1 keep-alive, `/ok`, `/status/<code>`,
    /// `/large` (about 1 MiB, chunked), `/items/<id>`.
    pub fn fixture(host: &'static str) -> Server {
        let dir = TempDir::new("fixture-server");
        let port = port_for(host);
        let mut cmd = Command::new(python());
        cmd.arg("-u").arg(fixture("http_fixture_server.py")).args([
            "--port",
            &port.to_string(),
            "--bind",
            host,
        ]);
        let mut proc = Proc::spawn("fixture server", &mut cmd);
        proc.wait_for_stdout("ready", LISTEN_TIMEOUT);
        Server {
            proc,
            host,
            port,
            dir,
        }
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// `http://HOST:PORT/path` (brackets for IPv6). `path` starts with `/`.
    pub fn url(&self, path: &str) -> String {
        if self.host.contains(':') {
            format!("http://[{}]:{}{path}", self.host, self.port)
        } else {
            format!("http://{}:{}{path}", self.host, self.port)
        }
    }

    /// Its state and output, plus nginx's error log where there is one.
    pub fn describe(&mut self) -> String {
        let log = std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default();
        format!("{}\n{}", self.proc.describe(), crate::tail(&log, 20))
    }
}

fn port_for(host: &str) -> u16 {
    if host.contains(':') {
        free_port_v6()
    } else {
        free_port()
    }
}

/// Polls with TCP connects (which carry no data, hence no span) until the server listens.
fn wait_for_listen(proc: &mut Proc, host: &str, port: u16, dir: &TempDir) {
    let addr: SocketAddr = format!("{host}:{port}").parse().expect("loopback address");
    let listening = wait_until(LISTEN_TIMEOUT, || {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Some(true);
        }
        proc.exited().map(|_| false)
    });
    if listening != Some(true) {
        let log = std::fs::read_to_string(dir.join("error.log")).unwrap_or_default();
        let description = proc.describe();
        panic!(
            "{} is not listening on {addr}:\n{description}\nerror.log:\n{log}",
            proc.name()
        );
    }
}

fn nginx_conf(dir: &TempDir, port: u16) -> String {
    let d = dir.path().display();
    // As root, workers would switch to `nobody`; keep them root so they can read the temp dir.
    // SAFETY: geteuid has no preconditions.
    let user = if unsafe { libc::geteuid() } == 0 {
        "user root;"
    } else {
        ""
    };
    format!(
        "daemon off;
master_process on;
worker_processes 1;
{user}
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    default_type text/plain;
    client_body_temp_path {d}/tmp_body;
    proxy_temp_path {d}/tmp_proxy;
    fastcgi_temp_path {d}/tmp_fastcgi;
    uwsgi_temp_path {d}/tmp_uwsgi;
    scgi_temp_path {d}/tmp_scgi;
    keepalive_timeout 60s;
    keepalive_requests 1000;
    server {{
        listen 127.0.0.1:{port};
        root {d}/html;
        location = /error {{ return 500 \"boom\\n\"; }}
        location /items/ {{ return 200 \"item\\n\"; }}
        location / {{ try_files $uri =404; }}
    }}
}}
"
    )
}
