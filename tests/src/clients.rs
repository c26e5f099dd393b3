//! Real HTTP clients: curl, Python's urllib (`tests/fixtures/urllib_get.py`) and a Python
//! keep-alive client that can be paused between two requests (`tests/fixtures/keepalive_client.py`).

use std::process::Command;
use std::time::Duration;

use crate::process::{describe_status, Proc};
use crate::{fixture, python};

/// How long one client run may take.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);

/// What one curl run reported for each URL, and its pid.
#[derive(Debug)]
pub struct CurlRun {
    pub pid: u32,
    /// `(http_code, num_connects)` per URL, in order: `num_connects` 0 means the connection was reused.
    pub transfers: Vec<(u16, u32)>,
    /// Body bytes received per URL.
    pub sizes: Vec<u64>,
}

/// One `curl -sS` invocation fetching every URL in order (on one connection where it can),
/// bodies to /dev/null. Panics if curl fails.
pub fn curl(urls: &[String]) -> CurlRun {
    curl_with(urls, &[])
}

/// [`curl`] with extra arguments before the URLs.
pub fn curl_with(urls: &[String], extra: &[&str]) -> CurlRun {
    let mut cmd = Command::new("curl");
    cmd.args([
        "-sS",
        "--globoff",
        "--max-time",
        "20",
        "-w",
        "%{http_code} %{num_connects} %{size_download}\\n",
    ])
    .args(extra);
    for url in urls {
        cmd.args(["-o", "/dev/null", url]);
    }
    let (pid, stdout) = run_to_end("curl", &mut cmd);
    let mut transfers = Vec::new();
    let mut sizes = Vec::new();
    for line in stdout.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if let [code, connects, size] = fields[..] {
            if let (Ok(code), Ok(connects), Ok(size)) =
                (code.parse(), connects.parse(), size.parse())
            {
                transfers.push((code, connects));
                sizes.push(size);
            }
        }
    }
    assert_eq!(
        transfers.len(),
        urls.len(),
        "curl printed {stdout:?} for {urls:?}"
    );
    CurlRun {
        pid,
        transfers,
        sizes,
    }
}

/// `GET http://127.0.0.1:{port}{path}` with curl (for the agent's own viewer API, which it does
/// not trace): `(status, body)`, status 0 when curl got no answer.
pub fn get_local(port: u16, path: &str) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "-w", "\n%{http_code}"])
        .arg(format!("http://127.0.0.1:{port}{path}"))
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

/// `python3 tests/fixtures/urllib_get.py URL...` with extra environment; returns its pid and
/// the status codes it printed (one per URL).
pub fn python_urllib(urls: &[String], env: &[(&str, &str)]) -> (u32, Vec<u16>) {
    let mut cmd = Command::new(python());
    cmd.arg(fixture("urllib_get.py"))
        .args(urls)
        .envs(env.iter().copied());
    let (pid, stdout) = run_to_end("urllib client", &mut cmd);
    let codes = stdout
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect::<Vec<u16>>();
    assert_eq!(
        codes.len(),
        urls.len(),
        "urllib client printed {stdout:?} for {urls:?}"
    );
    (pid, codes)
}

/// Runs a client to completion (bounded); panics unless it exits 0. Returns its pid and stdout.
fn run_to_end(name: &str, cmd: &mut Command) -> (u32, String) {
    let mut proc = Proc::spawn(name, cmd);
    proc.close_stdin();
    match proc.wait_exit(CLIENT_TIMEOUT) {
        Some(status) if status.success() => (proc.pid(), proc.stdout()),
        Some(status) => panic!(
            "{name} failed ({}):\n{}",
            describe_status(status),
            proc.describe()
        ),
        None => panic!(
            "{name} did not finish within {CLIENT_TIMEOUT:?}:\n{}",
            proc.describe()
        ),
    }
}

/// A Python client holding one HTTP/1.1 connection: it makes its first request at once and its
/// second only when told, so that a test can start the agent in between. It stays alive (its
/// connection open) until dropped.
pub struct KeepaliveClient {
    proc: Proc,
}

impl KeepaliveClient {
    /// Connects to `host:port`, GETs `first_path`, and waits.
    pub fn start(host: &str, port: u16, first_path: &str, second_path: &str) -> KeepaliveClient {
        let mut cmd = Command::new(python());
        cmd.arg("-u").arg(fixture("keepalive_client.py")).args([
            host,
            &port.to_string(),
            first_path,
            second_path,
        ]);
        let mut proc = Proc::spawn("keepalive client", &mut cmd);
        proc.wait_for_stdout("first-done 200", CLIENT_TIMEOUT);
        KeepaliveClient { proc }
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// Makes the second request on the same connection and waits for its response.
    pub fn second(&mut self) {
        self.proc.send_line("go");
        self.proc.wait_for_stdout("second-done 200", CLIENT_TIMEOUT);
        let connection = self
            .proc
            .stdout_lines()
            .iter()
            .any(|l| l.contains("same-connection yes"));
        assert!(
            connection,
            "the second request did not reuse the connection:\n{}",
            self.proc.describe()
        );
    }
}

/// Compiles `tests/fixtures/stack_client.c` without frame pointers (`gcc -g -O2
/// -fomit-frame-pointer`, with a build id) into `dir`: (executable, source).
pub fn build_stack_client_c(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let source = fixture("stack_client.c")
        .canonicalize()
        .expect("fixture path");
    let out = dir.join("stack_client");
    let run = Command::new("gcc")
        .args(["-g", "-O2", "-fomit-frame-pointer", "-Wl,--build-id", "-o"])
        .arg(&out)
        .arg(&source)
        .output()
        .expect("run gcc");
    assert!(
        run.status.success(),
        "gcc failed: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    (out, source)
}
