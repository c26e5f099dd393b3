//! [`OtlpReceiver`]: `tests/otlp_receiver.py` (grpcio + opentelemetry-proto) run with
//! `$ZTRACE_PYTHON`, listening for OTLP over gRPC and over HTTP on loopback and writing one JSON
//! line per span received: `transport`, `resource{}`, `trace_id`, `span_id`, `parent_span_id`,
//! `name`, `kind` (`SPAN_KIND_SERVER`...), `start_time_unix_nano`, `end_time_unix_nano`,
//! `status{code,message}`, `attributes{}`.

use std::fmt;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::process::Proc;
use crate::{free_port, python, repo_root, wait_until, TempDir};

/// A span as the receiver wrote it.
#[derive(Clone, PartialEq)]
pub struct OtlpSpan(pub Value);

impl OtlpSpan {
    fn str_field(&self, key: &str) -> Option<&str> {
        self.0.get(key)?.as_str()
    }
    /// How it arrived: the receiver's name for gRPC or HTTP.
    pub fn transport(&self) -> Option<&str> {
        self.str_field("transport")
    }
    pub fn name(&self) -> Option<&str> {
        self.str_field("name")
    }
    /// `SPAN_KIND_SERVER`, `SPAN_KIND_CLIENT`, ...
    pub fn kind(&self) -> Option<&str> {
        self.str_field("kind")
    }
    pub fn trace_id(&self) -> Option<&str> {
        self.str_field("trace_id")
    }
    pub fn span_id(&self) -> Option<&str> {
        self.str_field("span_id")
    }
    pub fn resource_str(&self, key: &str) -> Option<&str> {
        self.0.get("resource")?.get(key)?.as_str()
    }
    pub fn attr(&self, key: &str) -> Option<&Value> {
        self.0.get("attributes")?.get(key)
    }
    pub fn attr_str(&self, key: &str) -> Option<&str> {
        self.attr(key)?.as_str()
    }
    /// An integer attribute; OTLP's JSON mapping writes int64 as a string, so both are read.
    pub fn attr_i64(&self, key: &str) -> Option<i64> {
        int(self.attr(key)?)
    }
    pub fn start_time_unix_nano(&self) -> Option<i64> {
        int(self.0.get("start_time_unix_nano")?)
    }
    pub fn end_time_unix_nano(&self) -> Option<i64> {
        int(self.0.get("end_time_unix_nano")?)
    }
    /// The parent's span id; `None` for a root (OTLP writes an empty one).
    pub fn parent(&self) -> Option<&str> {
        self.str_field("parent_span_id").filter(|p| !p.is_empty())
    }
    /// The resource's `process.pid` (an int, which OTLP's JSON may write as a string).
    pub fn pid(&self) -> Option<u32> {
        int(self.0.get("resource")?.get("process.pid")?).and_then(|p| u32::try_from(p).ok())
    }
    /// `status.code` as the receiver wrote it (e.g. `STATUS_CODE_ERROR` or 2).
    pub fn status_code(&self) -> Option<&Value> {
        self.0.get("status")?.get("code")
    }
}

fn int(value: &Value) -> Option<i64> {
    match value {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

impl fmt::Debug for OtlpSpan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The receiver process, stopped on drop.
pub struct OtlpReceiver {
    proc: Proc,
    pub grpc_port: u16,
    pub http_port: u16,
    out: PathBuf,
    unix: PathBuf,
    _dir: TempDir,
}

impl OtlpReceiver {
    /// Starts the receiver and waits (30 s at most) for its `ready` line.
    pub fn start() -> OtlpReceiver {
        Self::start_failing(0)
    }

    /// [`start`](Self::start), with the first `fail_first` export requests failed (gRPC
    /// `UNAVAILABLE`, HTTP 503), for retries.
    pub fn start_failing(fail_first: u32) -> OtlpReceiver {
        let script = repo_root().join("tests/otlp_receiver.py");
        assert!(script.is_file(), "{} is missing", script.display());
        let dir = TempDir::new("otlp");
        let out = dir.join("spans.jsonl");
        let unix = dir.join("otlp.sock");
        let (grpc_port, http_port) = (free_port(), free_port());
        let mut cmd = Command::new(python());
        cmd.arg("-u")
            .arg(&script)
            .args([
                "--grpc-port",
                &grpc_port.to_string(),
                "--http-port",
                &http_port.to_string(),
                "--fail-first",
                &fail_first.to_string(),
                "--grpc-unix",
            ])
            .arg(&unix)
            .arg("--out")
            .arg(&out);
        let mut proc = Proc::spawn("otlp receiver", &mut cmd);
        proc.wait_for_stdout("ready", Duration::from_secs(30));
        OtlpReceiver {
            proc,
            grpc_port,
            http_port,
            out,
            unix,
            _dir: dir,
        }
    }

    /// `http://127.0.0.1:<grpc port>`.
    pub fn grpc_endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.grpc_port)
    }

    /// `unix:///<its temp dir>/otlp.sock`: OTLP gRPC on a Unix socket, which an exporter in
    /// another network namespace (a simulated host) reaches too.
    pub fn grpc_unix_endpoint(&self) -> String {
        format!("unix://{}", self.unix.display())
    }

    /// `http://127.0.0.1:<http port>`.
    pub fn http_endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    /// SIGTERM, then its exit status (`None`: still running 10 s later).
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        self.proc.signal(libc::SIGTERM);
        self.proc.wait_exit(Duration::from_secs(10))
    }

    /// Every span received so far (complete lines only).
    pub fn spans(&self) -> Vec<OtlpSpan> {
        let text = std::fs::read_to_string(&self.out).unwrap_or_default();
        text.lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .filter(Value::is_object)
            .map(OtlpSpan)
            .collect()
    }

    /// Spans matching `pred`: waits until at least `n` arrived, then 1.5 s more, and returns all
    /// that match. Panics after `timeout` with what did arrive and the receiver's output.
    pub fn wait_for_spans(
        &mut self,
        n: usize,
        pred: impl Fn(&OtlpSpan) -> bool,
        timeout: Duration,
    ) -> Vec<OtlpSpan> {
        let arrived = wait_until(timeout, || {
            if self.spans().iter().filter(|s| pred(s)).count() >= n {
                return Some(true);
            }
            self.proc.exited().map(|_| false)
        });
        if arrived != Some(true) {
            let all = self.spans();
            panic!(
                "{n} matching span(s) did not reach the OTLP receiver within {timeout:?}; it got {}:\n{:#?}\n{}",
                all.len(),
                &all[all.len().saturating_sub(20)..],
                self.proc.describe()
            );
        }
        std::thread::sleep(Duration::from_millis(1500));
        self.spans().into_iter().filter(|s| pred(s)).collect()
    }
}
