//! gRPC servers and clients for the HTTP/2 end-to-end tests: grpcio (tests/fixtures/grpc_py.py)
//! and grpc-go (tests/fixtures/grpc_go, built against Debian's golang-google-grpc-dev in GOPATH
//! mode), both over h2c on loopback; and Go's `x/net/http2/h2c` HTTP server
//! (tests/fixtures/h2c_go), which takes HTTP/1.1 `Upgrade: h2c`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::process::Proc;
use crate::{fixture, free_port, node_modules, python};

/// How long a server gets to print `ready`.
const READY: Duration = Duration::from_secs(20);

/// A gRPC server of service `demo.Greeter` on 127.0.0.1.
pub struct GrpcServer {
    pub port: u16,
    pub proc: Proc,
}

impl GrpcServer {
    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// `grpc_py.py server PORT`; with `forward`, SayHello calls SayHello there.
    pub fn python(forward: Option<u16>) -> GrpcServer {
        let port = free_port();
        let mut cmd = Command::new(python());
        cmd.arg(fixture("grpc_py.py"))
            .arg("server")
            .arg(port.to_string());
        if let Some(f) = forward {
            cmd.env("GRPC_FORWARD", format!("127.0.0.1:{f}"));
        }
        let mut proc = Proc::spawn("grpc_py server", &mut cmd);
        proc.wait_for_stdout("ready", READY);
        GrpcServer { port, proc }
    }

    /// `node grpc_node.js server PORT` (@grpc/grpc-js from the tests' npm prefix).
    pub fn node() -> GrpcServer {
        let port = free_port();
        let mut cmd = node_command();
        cmd.arg("server").arg(port.to_string());
        let mut proc = Proc::spawn("grpc_node server", &mut cmd);
        proc.wait_for_stdout("ready", READY);
        GrpcServer { port, proc }
    }

    /// `grpc_go serve PORT [127.0.0.1:FORWARD]`.
    pub fn go(binary: &Path, forward: Option<u16>) -> GrpcServer {
        match forward {
            Some(f) => Self::go_to(binary, &format!("127.0.0.1:{f}")),
            None => Self::go_serving(binary, None),
        }
    }

    /// `grpc_go serve PORT FORWARD`: FORWARD `host:port` (a gRPC server) or `pg:PORT`
    /// (PostgreSQL, queried through lib/pq).
    pub fn go_to(binary: &Path, forward: &str) -> GrpcServer {
        Self::go_serving(binary, Some(forward))
    }

    fn go_serving(binary: &Path, forward: Option<&str>) -> GrpcServer {
        let port = free_port();
        let mut cmd = Command::new(binary);
        cmd.arg("serve").arg(port.to_string());
        if let Some(f) = forward {
            cmd.arg(f);
        }
        let mut proc = Proc::spawn("grpc_go server", &mut cmd);
        proc.wait_for_stdout("ready", READY);
        GrpcServer { port, proc }
    }
}

/// Runs a client to completion: its pid and stdout. Panics when it fails.
fn run(name: &str, cmd: &mut Command) -> (u32, String) {
    let mut proc = Proc::spawn(name, cmd);
    let status = proc.wait_exit(Duration::from_secs(60));
    assert!(
        status.is_some_and(|s| s.success()),
        "{name} failed:\n{}",
        proc.describe()
    );
    (proc.pid(), proc.stdout())
}

/// `grpc_py.py client PORT CALL...`: its pid and stdout.
pub fn python_client(port: u16, calls: &[&str]) -> (u32, String) {
    let mut cmd = Command::new(python());
    cmd.arg(fixture("grpc_py.py"))
        .arg("client")
        .arg(port.to_string())
        .args(calls);
    run("grpc_py client", &mut cmd)
}

/// `grpc_py.py channel PORT`: a client whose one channel stays open; a line on its stdin runs a
/// call (`hello`, `fresh`), `done` is printed after each.
pub fn python_channel(port: u16) -> Proc {
    let mut cmd = Command::new(python());
    cmd.arg(fixture("grpc_py.py"))
        .arg("channel")
        .arg(port.to_string());
    let mut proc = Proc::spawn("grpc_py channel", &mut cmd);
    proc.wait_for_stdout("open", READY);
    proc
}

/// `node grpc_node.js` with @grpc/grpc-js on its module path.
fn node_command() -> Command {
    let modules = node_modules();
    assert!(
        modules.join("@grpc/grpc-js").is_dir(),
        "{} has no @grpc/grpc-js: `cargo xtask test` installs it (npm)",
        modules.display()
    );
    let mut cmd = Command::new("node");
    cmd.env("NODE_PATH", modules).arg(fixture("grpc_node.js"));
    cmd
}

/// `node grpc_node.js client PORT CALL...`: its pid and stdout.
pub fn node_client(port: u16, calls: &[&str]) -> (u32, String) {
    let mut cmd = node_command();
    cmd.arg("client").arg(port.to_string()).args(calls);
    run("grpc_node client", &mut cmd)
}

/// `grpc_go call PORT CALL...`: its pid and stdout.
pub fn go_client(binary: &Path, port: u16, calls: &[&str]) -> (u32, String) {
    let mut cmd = Command::new(binary);
    cmd.arg("call").arg(port.to_string()).args(calls);
    run("grpc_go client", &mut cmd)
}

/// Builds tests/fixtures/grpc_go into `dir` (Debian's golang-google-grpc-dev and
/// golang-github-lib-pq-dev, GOPATH mode).
pub fn build_go(dir: &Path) -> PathBuf {
    build_gopath(
        dir,
        "grpc_go",
        "apt-get install golang-go golang-google-grpc-dev golang-github-lib-pq-dev",
    )
}

/// Builds tests/fixtures/h2c_go into `dir` (Debian's golang-golang-x-net-dev, GOPATH mode).
pub fn build_h2c(dir: &Path) -> PathBuf {
    build_gopath(
        dir,
        "h2c_go",
        "apt-get install golang-go golang-golang-x-net-dev",
    )
}

/// Builds tests/fixtures/NAME/main.go into `dir`/NAME against Debian's Go packages.
fn build_gopath(dir: &Path, name: &str, install: &str) -> PathBuf {
    let out = dir.join(name);
    let mut cmd = Command::new("go");
    cmd.arg("build")
        .arg("-o")
        .arg(&out)
        .arg(fixture(&format!("{name}/main.go")))
        .envs([
            ("GO111MODULE", "off"),
            ("GOPATH", "/usr/share/gocode"),
            ("GOPROXY", "off"),
            ("CGO_ENABLED", "0"),
        ]);
    let (_, _) = run(&format!("go build {name} ({install})"), &mut cmd);
    out
}

/// `h2c_go PORT`: an HTTP server taking h2c by prior knowledge or by `Upgrade: h2c`.
pub fn h2c_server(binary: &Path) -> GrpcServer {
    let port = free_port();
    let mut cmd = Command::new(binary);
    cmd.arg(port.to_string());
    let mut proc = Proc::spawn("h2c_go server", &mut cmd);
    proc.wait_for_stdout("ready", READY);
    GrpcServer { port, proc }
}
