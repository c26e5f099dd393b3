//! TLS for the end-to-end tests: a self-signed certificate made with `openssl req`, HTTPS
//! servers (nginx with `ssl`, Python's `http.server` in `ssl`, Node.js `https`) and clients
//! (Node.js, Java's own TLS). Every server is stopped on drop.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::nginx::{self, Nginx};
use crate::process::{describe_status, Proc};
use crate::{fixture, free_port, python, TempDir};

/// How long a server may take to listen, and a client to finish.
const TIMEOUT: Duration = Duration::from_secs(60);

/// A self-signed certificate for `localhost` and `127.0.0.1`, with its key.
pub struct Certs {
    pub cert: PathBuf,
    pub key: PathBuf,
    _dir: TempDir,
}

impl Certs {
    /// `openssl req -x509` into a temporary directory.
    pub fn make() -> Certs {
        let dir = TempDir::new("certs");
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        let out = Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=localhost",
            ])
            .args([
                "-addext",
                "subjectAltName=DNS:localhost,IP:127.0.0.1",
                "-keyout",
            ])
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .expect("run openssl (apt-get install openssl)");
        assert!(
            out.status.success(),
            "openssl req failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Certs {
            cert,
            key,
            _dir: dir,
        }
    }
}

/// An HTTPS server on 127.0.0.1, stopped on drop.
pub struct TlsServer {
    proc: Proc,
    pub port: u16,
    _dir: TempDir,
}

impl TlsServer {
    /// nginx (one worker, keep-alive) serving `/hello` over TLS with only the given protocols
    /// (`"TLSv1.2 TLSv1.3"`).
    pub fn nginx(certs: &Certs, protocols: &str) -> TlsServer {
        let config = nginx::Config {
            http: false,
            tls: Some((certs, Some(protocols))),
            load: false,
            http2: false,
        };
        let nginx = Nginx::start(&[("hello", "hello over tls\n")], &config);
        let port = nginx.tls_port.expect("an HTTPS port");
        TlsServer {
            proc: nginx.proc,
            port,
            _dir: nginx.dir,
        }
    }

    /// `tests/fixtures/https_server.py`: Python's `http.server` wrapped in `ssl` (OpenSSL's
    /// `_ex` functions).
    pub fn python(certs: &Certs) -> TlsServer {
        let port = free_port();
        let mut cmd = Command::new(python());
        cmd.arg("-u")
            .arg(fixture("https_server.py"))
            .arg(port.to_string())
            .arg(&certs.cert)
            .arg(&certs.key);
        Self::wait(
            Proc::spawn("https_server.py", &mut cmd),
            port,
            TempDir::new("py-tls"),
        )
    }

    /// `tests/fixtures/node_https_server.js` on `/usr/bin/node` (OpenSSL linked in).
    pub fn node(certs: &Certs) -> TlsServer {
        let port = free_port();
        let mut cmd = Command::new("node");
        cmd.arg(fixture("node_https_server.js"))
            .arg(port.to_string())
            .arg(&certs.cert)
            .arg(&certs.key);
        Self::wait(
            Proc::spawn("node https server", &mut cmd),
            port,
            TempDir::new("node-tls"),
        )
    }

    /// `go_https serve` (built by [`build_go_https`]): Go's net/http over crypto/tls, HTTP/1.1.
    pub fn go(binary: &Path, certs: &Certs) -> TlsServer {
        let port = free_port();
        let mut cmd = Command::new(binary);
        cmd.arg("serve")
            .arg(port.to_string())
            .arg(&certs.cert)
            .arg(&certs.key);
        Self::wait(
            Proc::spawn("go https server", &mut cmd),
            port,
            TempDir::new("go-tls"),
        )
    }

    fn wait(mut proc: Proc, port: u16, dir: TempDir) -> TlsServer {
        proc.wait_listening(SocketAddr::from(([127, 0, 0, 1], port)), TIMEOUT, None);
        TlsServer {
            proc,
            port,
            _dir: dir,
        }
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// `https://127.0.0.1:PORT{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.port)
    }
}

/// Runs a client to completion; returns its pid and stdout. Panics unless it exits 0.
pub fn run_client(name: &str, cmd: &mut Command) -> (u32, String) {
    let mut proc = Proc::spawn(name, cmd);
    proc.close_stdin();
    match proc.wait_exit(TIMEOUT) {
        Some(status) if status.success() => (proc.pid(), proc.stdout()),
        Some(status) => panic!(
            "{name} failed ({}):\n{}",
            describe_status(status),
            proc.describe()
        ),
        None => panic!(
            "{name} did not finish within {TIMEOUT:?}:\n{}",
            proc.describe()
        ),
    }
}

/// `node tests/fixtures/node_https_get.js CA URL...` (one keep-alive agent); its pid.
pub fn node_get(ca: &Path, urls: &[String]) -> u32 {
    let mut cmd = Command::new("node");
    cmd.arg(fixture("node_https_get.js")).arg(ca).args(urls);
    let (pid, stdout) = run_client("node https client", &mut cmd);
    assert_eq!(
        stdout.lines().filter(|l| l.trim() == "200").count(),
        urls.len(),
        "node client printed {stdout:?}"
    );
    pid
}

/// `java tests/fixtures/JavaHttpsGet.java URL` (Java's own TLS); its pid.
pub fn java_get(url: &str) -> u32 {
    let mut cmd = Command::new("java");
    cmd.arg(fixture("JavaHttpsGet.java")).arg(url);
    let (pid, stdout) = run_client("java https client", &mut cmd);
    assert_eq!(stdout.trim(), "200", "java client printed {stdout:?}");
    pid
}

/// Debian's Go from bookworm-backports (`golang-1.23-go`, installed by `cargo xtask test`).
pub const NEWER_GO: &str = "/usr/lib/go-1.23/bin/go";

/// Builds `tests/fixtures/go_https/main.go` into `dir` with Debian's Go (`go`: a path to the
/// toolchain's `go`, or `go` on PATH, Go 1.19 on bookworm), in GOPATH mode, without cgo (no
/// module proxy needed: the standard library only).
pub fn build_go_https(dir: &Path, go: &str) -> PathBuf {
    assert!(
        go == "go" || Path::new(go).is_file(),
        "{go} is missing: `cargo xtask test` installs it (golang-1.23-go from bookworm-backports)"
    );
    let out = dir.join("go_https");
    let mut cmd = Command::new(go);
    // The toolchain's own GOROOT, whatever `go` on PATH is.
    cmd.env_remove("GOROOT");
    cmd.arg("build")
        .arg("-o")
        .arg(&out)
        .arg(fixture("go_https/main.go"));
    cmd.envs([
        ("GO111MODULE", "off"),
        ("GOPROXY", "off"),
        ("CGO_ENABLED", "0"),
    ]);
    let (_, _) = run_client("go build go_https", &mut cmd);
    out
}

/// `go_https get CA URL...` (one keep-alive connection); its pid.
pub fn go_get(binary: &Path, ca: &Path, urls: &[String]) -> u32 {
    let mut cmd = Command::new(binary);
    cmd.arg("get").arg(ca).args(urls);
    let (pid, stdout) = run_client("go https client", &mut cmd);
    assert_eq!(
        stdout.lines().filter(|l| l.trim() == "200").count(),
        urls.len(),
        "go client printed {stdout:?}"
    );
    pid
}

/// `hey -n N -c 1 URL` (Debian's stripped Go binary; it accepts any certificate); its pid.
pub fn hey(n: usize, url: &str) -> u32 {
    let mut cmd = Command::new("hey");
    cmd.args(["-n", &n.to_string(), "-c", "1", url]);
    let (pid, stdout) = run_client("hey", &mut cmd);
    assert!(
        stdout.contains(&format!("[200]\t{n} responses")),
        "hey printed {stdout:?}"
    );
    pid
}
