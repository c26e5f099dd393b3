//! gRPC servers and clients for the HTTP/2 end-to-end tests: grpcio (tests/fixtures/grpc_py.py)
//! and grpc-go (tests/fixtures/grpc_go, built against Debian's golang-google-grpc-dev in GOPATH
//! mode), both over h2c on loopback.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::process::Proc;
use crate::{fixture, free_port, python};

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

    /// `grpc_go serve PORT [127.0.0.1:FORWARD]`.
    pub fn go(binary: &Path, forward: Option<u16>) -> GrpcServer {
        let port = free_port();
        let mut cmd = Command::new(binary);
        cmd.arg("serve").arg(port.to_string());
        if let Some(f) = forward {
            cmd.arg(format!("127.0.0.1:{f}"));
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

/// `grpc_go call PORT CALL...`: its pid and stdout.
pub fn go_client(binary: &Path, port: u16, calls: &[&str]) -> (u32, String) {
    let mut cmd = Command::new(binary);
    cmd.arg("call").arg(port.to_string()).args(calls);
    run("grpc_go client", &mut cmd)
}

/// Builds tests/fixtures/grpc_go into `dir` (Debian's golang-google-grpc-dev, GOPATH mode).
pub fn build_go(dir: &Path) -> PathBuf {
    let out = dir.join("grpc_go");
    let mut cmd = Command::new("go");
    cmd.arg("build")
        .arg("-o")
        .arg(&out)
        .arg(fixture("grpc_go/main.go"))
        .envs([
            ("GO111MODULE", "off"),
            ("GOPATH", "/usr/share/gocode"),
            ("GOPROXY", "off"),
            ("CGO_ENABLED", "0"),
        ]);
    let (_, _) = run(
        "go build grpc_go (apt-get install golang-go golang-google-grpc-dev)",
        &mut cmd,
    );
    out
}
