//! Harness of ztrace's end-to-end tests: the agent, real servers and clients, an OTLP receiver.
//!
//! The tests in `tests/tests/` need root and eBPF and are `#[ignore]`d for a plain `cargo test`;
//! `cargo xtask test` runs them with `--include-ignored` and these variables:
//! - `ZTRACE_BIN`: the agent binary (required);
//! - `ZTRACE_PYTHON`: a Python with grpcio and opentelemetry-proto (defaults to `python3`);
//! - `ZTRACE_REPO`: the repository root (defaults to the one this crate was built in).
//!
//! Every process started here is killed when its guard drops, every wait is bounded, and every
//! address is loopback. The harness asserts nothing about spans itself: tests do, field by field.

pub mod backend;
pub mod checks;
pub mod clients;
pub mod cri;
pub mod example;
pub mod grpc;
pub mod hosts;
pub mod memcached;
pub mod nats;
pub mod nginx;
pub mod otlp;
pub mod postgres;
pub mod process;
pub mod rabbitmq;
pub mod redis;
pub mod servers;
pub mod span;
pub mod tls;
pub mod ztrace;

use std::net::{Ipv4Addr, Ipv6Addr, TcpListener};
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub use span::Span;
pub use ztrace::Ztrace;

/// Why every end-to-end test is ignored by a plain `cargo test`.
pub const IGNORE_REASON: &str = "needs root and eBPF; run by cargo xtask test";

/// The repository root.
pub fn repo_root() -> PathBuf {
    match std::env::var_os("ZTRACE_REPO") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
            .canonicalize()
            .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")),
    }
}

/// A file under `tests/fixtures/`.
pub fn fixture(name: &str) -> PathBuf {
    repo_root().join("tests/fixtures").join(name)
}

/// The Python that runs servers, clients and the OTLP receiver.
pub fn python() -> PathBuf {
    match std::env::var_os("ZTRACE_PYTHON") {
        Some(python) if !python.is_empty() => PathBuf::from(python),
        _ => PathBuf::from("python3"),
    }
}

/// The `node_modules` folder of the npm packages the tests use (`cargo xtask test` installs
/// them under `target/test-npm`; `ZTRACE_NODE_MODULES` points elsewhere).
pub fn node_modules() -> PathBuf {
    match std::env::var_os("ZTRACE_NODE_MODULES") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => repo_root().join("target/test-npm/node_modules"),
    }
}

/// A TCP port free on 127.0.0.1 right now.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local_addr").port()
}

/// A TCP port free on [::1] right now.
pub fn free_port_v6() -> u16 {
    let listener =
        TcpListener::bind((Ipv6Addr::LOCALHOST, 0)).expect("bind [::1]:0 (is IPv6 loopback up?)");
    listener.local_addr().expect("local_addr").port()
}

/// Polls `check` every 50 ms until it returns `Some`, or `None` after `timeout`.
pub fn wait_until<T>(timeout: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A directory under the system temp dir, removed when dropped.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(prefix: &str) -> TempDir {
        static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("ztrace-e2e-{prefix}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        TempDir { path }
    }

    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// The last `n` lines of a text, for failure messages.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
