//! [`Ztrace`]: the agent under test, started from `$ZTRACE_BIN`, its spans read from stdout.
//!
//! Contracts relied on (DESIGN.md and the agent's owner): stderr gets the line `ztrace is ready`
//! once every program is attached; `--print=json` writes one span per stdout line; SIGTERM makes it
//! exit 0 after printing `ztrace stats: {json}` on stderr.

use std::path::PathBuf;
use std::process::Command;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

use crate::process::{describe_status, Proc};
use crate::span::{self, Span};
use crate::{wait_until, TempDir};

/// The line the agent prints on stderr once it is attached.
pub const READY_LINE: &str = "ztrace is ready";
/// How long the agent may take to load and attach.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long to keep listening once the expected spans arrived, so that extra ones show up too.
pub const SETTLE: Duration = Duration::from_millis(1500);
/// The default wait for spans.
pub const SPAN_TIMEOUT: Duration = Duration::from_secs(20);

/// A running agent. Killed (with its process group) when dropped; [`Ztrace::stop`] stops it cleanly.
pub struct Ztrace {
    proc: Proc,
    /// Stdout lines already parsed, and the spans among them.
    parsed: Mutex<(usize, Vec<Span>)>,
    /// How long it took to print its ready line.
    ready_after: Duration,
    stopped: bool,
    _data_dir: TempDir,
}

/// What a cleanly stopped agent left.
pub struct Stopped {
    pub stderr: String,
    /// The `ztrace stats: {...}` object, if printed.
    pub stats: Option<Map<String, Value>>,
    /// Spans printed over its whole run.
    pub spans: Vec<Span>,
}

impl Stopped {
    /// The counter `name` of the stats line (0 when it is not there).
    pub fn stat(&self, name: &str) -> u64 {
        self.stats
            .as_ref()
            .and_then(|m| m.get(name))
            .and_then(Value::as_u64)
            .unwrap_or(0)
    }

    /// `name=value` of the stats line's entries whose names contain one of `parts`, for a
    /// failure message.
    pub fn counters(&self, parts: &[&str]) -> String {
        self.stats
            .iter()
            .flatten()
            .filter(|(k, _)| parts.iter().any(|p| k.contains(p)))
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// The agent binary: `$ZTRACE_BIN`.
pub fn binary() -> PathBuf {
    let bin = std::env::var_os("ZTRACE_BIN").filter(|b| !b.is_empty()).unwrap_or_else(|| {
        panic!("ZTRACE_BIN is not set: run the end-to-end tests with `cargo xtask test`, which builds the agent and sets it")
    });
    let bin = PathBuf::from(bin);
    assert!(bin.is_file(), "ZTRACE_BIN={} does not exist", bin.display());
    bin
}

impl Ztrace {
    /// Starts the agent with `args` and waits until it is ready; panics with its stderr if it
    /// exits first or is not ready within [`READY_TIMEOUT`]. Unless `args` choose otherwise (and
    /// where the agent has these options), the viewer is off (`--no-ui`) and the store lives in
    /// a temporary `--data-dir`, so that tests never collide with another agent on the machine.
    pub fn start(args: &[&str]) -> Ztrace {
        let data_dir = TempDir::new("data");
        let mut cmd = Command::new(binary());
        cmd.args(args);
        if supports("--no-ui")
            && !args
                .iter()
                .any(|a| a.starts_with("--ui") || *a == "--no-ui")
        {
            cmd.arg("--no-ui");
        }
        if supports("--data-dir") && !args.iter().any(|a| a.starts_with("--data-dir")) {
            cmd.arg("--data-dir").arg(data_dir.path());
        }
        if let Some(level) = std::env::var_os("ZTRACE_E2E_LOG_LEVEL") {
            cmd.arg("--log-level").arg(level);
        }
        let started = Instant::now();
        let mut proc = Proc::spawn("ztrace", &mut cmd);
        proc.wait_for_stderr(READY_LINE, READY_TIMEOUT);
        Ztrace {
            proc,
            parsed: Mutex::new((0, Vec::new())),
            ready_after: started.elapsed(),
            stopped: false,
            _data_dir: data_dir,
        }
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// Waits until a line of the agent's stderr (its log) contains `needle`; panics after
    /// `timeout` showing its output.
    pub fn wait_for_log(&mut self, needle: &str, timeout: Duration) {
        self.proc.wait_for_stderr(needle, timeout);
    }

    /// Every span printed so far.
    pub fn spans(&self) -> Vec<Span> {
        let mut parsed = self
            .parsed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let new = self.proc.stdout_lines_from(parsed.0);
        parsed.0 += new.len();
        parsed
            .1
            .extend(new.iter().filter_map(|line| Span::parse(line)));
        parsed.1.clone()
    }

    /// Spans matching `pred`: waits until at least one arrived, then [`SETTLE`]s and returns all
    /// that match. Panics after `timeout` showing every span seen and the agent's stderr.
    pub fn wait_for_spans(&mut self, pred: impl Fn(&Span) -> bool, timeout: Duration) -> Vec<Span> {
        self.wait_for_n_spans(1, pred, timeout)
    }

    /// Like [`Ztrace::wait_for_spans`], waiting for at least `n` matching spans.
    pub fn wait_for_n_spans(
        &mut self,
        n: usize,
        pred: impl Fn(&Span) -> bool,
        timeout: Duration,
    ) -> Vec<Span> {
        let arrived = wait_until(timeout, || {
            let matching = self.spans().into_iter().filter(|s| pred(s)).count();
            if matching >= n {
                return Some(true);
            }
            self.proc.exited().map(|_| false)
        });
        match arrived {
            Some(true) => {
                std::thread::sleep(SETTLE);
                self.spans().into_iter().filter(|s| pred(s)).collect()
            }
            Some(false) => panic!(
                "ztrace exited while waiting for {n} span(s):\n{}",
                self.report_for(&pred)
            ),
            None => panic!(
                "{n} matching span(s) did not arrive within {timeout:?}:\n{}",
                self.report_for(&pred)
            ),
        }
    }

    /// Listens for `duration` and returns the spans matching `pred` (for "nothing arrives" checks).
    pub fn spans_within(&mut self, duration: Duration, pred: impl Fn(&Span) -> bool) -> Vec<Span> {
        std::thread::sleep(duration);
        assert!(
            self.proc.exited().is_none(),
            "ztrace exited:\n{}",
            self.report()
        );
        self.spans().into_iter().filter(|s| pred(s)).collect()
    }

    /// Every span seen and the agent's state and stderr: for failure messages.
    pub fn report(&mut self) -> String {
        self.report_for(&|_: &Span| false)
    }

    /// Like [`Ztrace::report`], with the spans matching `pred` first (the agent sees the whole
    /// host, so the test's own spans can drown among others).
    pub fn report_for(&mut self, pred: &dyn Fn(&Span) -> bool) -> String {
        let spans = self.spans();
        let (matching, others): (Vec<Span>, Vec<Span>) = spans.into_iter().partition(|s| pred(s));
        let shown = &others[others.len().saturating_sub(20)..];
        format!(
            "{} matching span(s):\n{}\n{} other span(s), the last {}:\n{}\nready after {:.1} s; {}",
            matching.len(),
            span::list(&matching),
            others.len(),
            shown.len(),
            span::list(shown),
            self.ready_after.as_secs_f64(),
            self.proc.describe()
        )
    }

    /// Sends SIGTERM, waits (30 s at most) and asserts a clean exit (code 0).
    pub fn stop(mut self) -> Stopped {
        self.stopped = true;
        self.proc.signal(libc::SIGTERM);
        let Some(status) = self.proc.wait_exit(Duration::from_secs(30)) else {
            panic!(
                "ztrace did not exit within 30 s of SIGTERM:\n{}",
                self.report()
            );
        };
        let spans = self.spans();
        let stderr = self.proc.stderr();
        assert!(
            status.success(),
            "ztrace stopped with {} instead of exit code 0:\n{}",
            describe_status(status),
            self.report()
        );
        let stats = stats_line(&stderr);
        Stopped {
            stderr,
            stats,
            spans,
        }
    }
}

impl Drop for Ztrace {
    /// A test that fails while the agent runs gets the agent's side of the story in its output.
    fn drop(&mut self) {
        if std::thread::panicking() && !self.stopped {
            eprintln!("--- ztrace when the test failed ---\n{}", self.report());
        }
    }
}

/// Whether the agent's `--help` lists an option.
fn supports(option: &str) -> bool {
    static HELP: OnceLock<String> = OnceLock::new();
    let help = HELP.get_or_init(|| {
        Command::new(binary())
            .arg("--help")
            .output()
            .map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
            .unwrap_or_default()
    });
    help.split(|c: char| c.is_whitespace() || c == ',' || c == '=' || c == '[')
        .any(|word| word == option)
}

/// The object of the last `ztrace stats: {...}` line.
pub fn stats_line(stderr: &str) -> Option<Map<String, Value>> {
    stderr.lines().rev().find_map(|line| {
        let (_, json) = line.split_once("ztrace stats: ")?;
        match serde_json::from_str(json.trim()) {
            Ok(Value::Object(map)) => Some(map),
            _ => None,
        }
    })
}
