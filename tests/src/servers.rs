//! Real HTTP servers on loopback: Python's `http.server`, nginx, and the fixture server
//! (`tests/fixtures/http_fixture_server.py`) for special responses. Each is stopped on drop.

use std::process::Command;
use std::time::Duration;

use crate::nginx::{self, Nginx};
use crate::process::Proc;
use crate::{fixture, free_port, free_port_v6, python, TempDir};

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
        let files = [
            ("hello", HELLO_BODY),
            ("index.html", "<!doctype html><p>index</p>\n"),
        ];
        let nginx = Nginx::start(
            &files,
            &nginx::Config {
                http: true,
                tls: None,
                load: false,
                http2: false,
            },
        );
        let port = nginx.port.expect("an HTTP port");
        Server {
            proc: nginx.proc,
            host: "127.0.0.1",
            port,
            dir: nginx.dir,
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
