//! [`Proc`]: a child process whose output is collected line by line and which is stopped, with
//! its whole process group, when the guard drops.

use std::io::{BufRead as _, BufReader, Read, Write as _};
use std::os::unix::process::{CommandExt as _, ExitStatusExt as _};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::{tail, wait_until};

/// Lines a child wrote to one stream, shared with the thread that reads them.
#[derive(Default)]
struct Lines(Mutex<Vec<String>>);

impl Lines {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<String>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A running child process (in its own process group) with its stdout and stderr collected.
pub struct Proc {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Arc<Lines>,
    stderr: Arc<Lines>,
    readers: Vec<JoinHandle<()>>,
    status: Option<ExitStatus>,
}

impl Proc {
    /// Starts `cmd` with piped stdio in a new process group; panics if it cannot start.
    /// OpenTelemetry variables of the test's own environment (`OTEL_*`) are not passed on, so
    /// that service names and exporter settings are the ones each test chooses.
    pub fn spawn(name: &str, cmd: &mut Command) -> Proc {
        let chosen: Vec<_> = cmd.get_envs().map(|(key, _)| key.to_owned()).collect();
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("OTEL_") && !chosen.contains(&key) {
                cmd.env_remove(&key);
            }
        }
        // SAFETY: prctl is async-signal-safe; it only asks the kernel to SIGKILL the child when
        // the thread that started it dies, so nothing outlives a test process killed from outside.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong);
                Ok(())
            });
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("could not start {name} ({cmd:?}): {e}"));
        let stdout = Arc::new(Lines::default());
        let stderr = Arc::new(Lines::default());
        let echo = std::env::var_os("ZTRACE_E2E_VERBOSE").is_some();
        let mut readers = Vec::new();
        if let Some(out) = child.stdout.take() {
            readers.push(collect(
                out,
                Arc::clone(&stdout),
                echo.then(|| format!("[{name} stdout] ")),
            ));
        }
        if let Some(err) = child.stderr.take() {
            readers.push(collect(
                err,
                Arc::clone(&stderr),
                echo.then(|| format!("[{name} stderr] ")),
            ));
        }
        let stdin = child.stdin.take();
        Proc {
            name: name.to_owned(),
            child,
            stdin,
            stdout,
            stderr,
            readers,
            status: None,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Every stdout line so far.
    pub fn stdout_lines(&self) -> Vec<String> {
        self.stdout.lock().clone()
    }

    /// Stdout lines from index `from` on (for incremental readers).
    pub fn stdout_lines_from(&self, from: usize) -> Vec<String> {
        let lines = self.stdout.lock();
        lines
            .get(from..)
            .map(<[String]>::to_vec)
            .unwrap_or_default()
    }

    pub fn stdout(&self) -> String {
        self.stdout.lock().join("\n")
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().join("\n")
    }

    /// Its exit status, if it has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    /// Name, pid, state and the ends of its output: what a failure message needs.
    pub fn describe(&mut self) -> String {
        let state = match self.exited() {
            Some(status) => format!("exited: {}", describe_status(status)),
            None => "running".to_owned(),
        };
        format!(
            "{} (pid {}, {state})\n--- stdout (tail) ---\n{}\n--- stderr (tail) ---\n{}\n---",
            self.name,
            self.pid(),
            tail(&self.stdout(), 30),
            tail(&self.stderr(), 60)
        )
    }

    /// Waits until a stdout line contains `needle`; panics (showing the output) on exit or timeout.
    pub fn wait_for_stdout(&mut self, needle: &str, timeout: Duration) {
        self.wait_for_line(needle, timeout, true);
    }

    /// Waits until a stderr line contains `needle`; panics (showing the output) on exit or timeout.
    pub fn wait_for_stderr(&mut self, needle: &str, timeout: Duration) {
        self.wait_for_line(needle, timeout, false);
    }

    fn wait_for_line(&mut self, needle: &str, timeout: Duration, stdout: bool) {
        let found = wait_until(timeout, || {
            let lines = if stdout { &self.stdout } else { &self.stderr };
            if lines.lock().iter().any(|l| l.contains(needle)) {
                return Some(true);
            }
            // Exited: one last look, since the reader thread may lag behind the exit.
            if self.exited().is_some() {
                std::thread::sleep(Duration::from_millis(200));
                let lines = if stdout { &self.stdout } else { &self.stderr };
                return Some(lines.lock().iter().any(|l| l.contains(needle)));
            }
            None
        });
        let what = match found {
            Some(true) => return,
            Some(false) => format!("exited before printing `{needle}`"),
            None => format!("printed no `{needle}` within {timeout:?}"),
        };
        let description = self.describe();
        panic!("{} {what}:\n{description}", self.name);
    }

    /// Writes one line to its stdin.
    pub fn send_line(&mut self, line: &str) {
        let stdin = self
            .stdin
            .as_mut()
            .unwrap_or_else(|| panic!("{}: stdin already closed", self.name));
        writeln!(stdin, "{line}")
            .and_then(|()| stdin.flush())
            .unwrap_or_else(|e| panic!("{}: write stdin: {e}", self.name));
    }

    /// Closes its stdin.
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Sends a signal to the process itself (not its group).
    pub fn signal(&mut self, signal: libc::c_int) {
        if self.exited().is_none() {
            // SAFETY: kill(2) on our own child, which is not reaped yet (exited() is None).
            unsafe { libc::kill(self.pid() as libc::pid_t, signal) };
        }
    }

    /// Waits for it to exit; `None` after `timeout`. Joins the output readers once it has.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let status = wait_until(timeout, || self.exited())?;
        self.join_readers();
        Some(status)
    }

    fn join_readers(&mut self) {
        // The readers end at EOF, which comes when every holder of the pipes is gone; a grandchild
        // still holding them must not hang us, so join only the finished ones.
        let (done, pending): (Vec<_>, Vec<_>) = std::mem::take(&mut self.readers)
            .into_iter()
            .partition(JoinHandle::is_finished);
        for handle in done {
            let _ = handle.join();
        }
        if !pending.is_empty() {
            std::thread::sleep(Duration::from_millis(200));
            for handle in pending {
                if handle.is_finished() {
                    let _ = handle.join();
                }
            }
        }
    }

    /// Polls with TCP connects (which carry no data, hence no span) until something listens on
    /// `addr`; panics with its output and the end of `log` (a server's error log) if it exits
    /// first or `timeout` passes.
    pub fn wait_listening(
        &mut self,
        addr: std::net::SocketAddr,
        timeout: Duration,
        log: Option<&std::path::Path>,
    ) {
        let listening = wait_until(timeout, || {
            if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Some(true);
            }
            self.exited().map(|_| false)
        });
        if listening != Some(true) {
            let log = log
                .and_then(|l| std::fs::read_to_string(l).ok())
                .unwrap_or_default();
            let description = self.describe();
            panic!(
                "{} is not listening on {addr}:\n{description}\n{}",
                self.name,
                tail(&log, 20)
            );
        }
    }

    /// Stops the whole process group: SIGTERM, then SIGKILL after `grace`.
    pub fn terminate(&mut self, grace: Duration) {
        let group = self.pid() as libc::pid_t;
        if self.exited().is_none() {
            // SAFETY: signals the process group this child leads (process_group(0) at spawn).
            unsafe { libc::kill(-group, libc::SIGTERM) };
            if self.wait_exit(grace).is_none() {
                // SAFETY: as above.
                unsafe { libc::kill(-group, libc::SIGKILL) };
                let _ = self.child.wait();
            }
        }
        // Children of the group leader (e.g. nginx workers) may outlive it briefly.
        // SAFETY: as above; ESRCH when the group is gone is fine.
        unsafe { libc::kill(-group, libc::SIGKILL) };
        self.join_readers();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stdin = None;
        self.terminate(Duration::from_secs(3));
    }
}

/// Exit code or signal, readably.
pub fn describe_status(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        _ => format!("{status}"),
    }
}

fn collect(
    stream: impl Read + Send + 'static,
    lines: Arc<Lines>,
    echo: Option<String>,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stream);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buf)
                        .trim_end_matches(['\n', '\r'])
                        .to_owned();
                    if let Some(prefix) = &echo {
                        eprintln!("{prefix}{line}");
                    }
                    lines.lock().push(line);
                }
            }
        }
    })
}
