//! Go programs: found on each process's first connection (and again after an exec), probed
//! once per executable file, and followed per process (`GO_PROCS`: the kernel then reports the
//! goroutine of each syscall, see `ebpf/src/go`). What a Go binary must offer for that, and
//! where its functions are, is `golang::runtime`'s business; this module decides which processes
//! to look at, asks the attacher to probe, and makes the attach-table rows.
//!
//! It does no ELF work twice for one file (device, inode and ctime) and never blocks capture:
//! the pipeline runs it between drains.

use std::{
    collections::{HashMap, HashSet},
    os::unix::fs::MetadataExt as _,
    path::Path,
};

use crate::golang::grpc::GrpcClient;
use crate::golang::runtime::{inspect, GoBinary};
pub use crate::golang::{
    code::Sites,
    runtime::{Handoff, NEWPROC},
};

/// Processes remembered as checked before the set is cleared (each is then checked again).
const MAX_CHECKED: usize = 65_536;

/// The kernel side of following Go programs (implemented by `bpf::Probes`).
pub trait GoAttacher {
    /// Probes `functions` (of `golang::runtime::HANDOFF_FUNCTIONS`) in the file at `path`.
    fn attach_go_handoffs(&mut self, path: &Path, functions: &[Handoff]) -> Result<(), String>;
    /// Probes [`NEWPROC`]'s entry and RETs in the file at `path`.
    fn attach_go_spawn(&mut self, path: &Path, sites: &Sites) -> Result<(), String>;
    /// Probes grpc-go's client stream creation (entry and RETs) in the file at `path`.
    fn attach_go_grpc(&mut self, path: &Path, client: &GrpcClient) -> Result<(), String>;
    /// Starts (`Some(goid offset)`) or stops following the goroutines of a process.
    fn follow_go_process(&mut self, tgid: u32, goid_offset: Option<u32>) -> Result<(), String>;
}

/// One line of the attach table for a Go executable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GoRow {
    pub path: String,
    pub pid: u32,
    pub line: String,
}

/// Go executables and processes seen so far.
#[derive(Default)]
pub struct GoDiscovery {
    /// By (device, inode, ctime): an inode number freed by a deleted file and reused is another
    /// file.
    files: HashMap<(u64, u64, i64), GoBinary>,
    checked: HashSet<u32>,
    followed: HashSet<u32>,
    pending: Vec<u32>,
    /// Stacks are on: the owner-stack probe (`go_owner_stack`) is attached too.
    stacks: bool,
    /// Followed processes whose stream-handler `go` statements are known: tgid → their ranges.
    stream_spawners: HashMap<u32, Ranges>,
    /// The same by file, shared by its processes.
    spawners_of_file: HashMap<(u64, u64, i64), Ranges>,
}

/// Address ranges `[start, end)`, shared.
type Ranges = std::sync::Arc<[(u64, u64)]>;

impl GoDiscovery {
    pub fn new(stacks: bool) -> Self {
        GoDiscovery {
            stacks,
            ..Self::default()
        }
    }

    /// Every running process but `own_pid` (at start: programs already running).
    pub fn scan_at_start(&mut self, own_pid: u32, attacher: &mut dyn GoAttacher) -> Vec<GoRow> {
        if let Ok(entries) = std::fs::read_dir("/proc") {
            for entry in entries.flatten() {
                if let Some(pid) = entry
                    .file_name()
                    .to_str()
                    .and_then(|n| n.parse::<u32>().ok())
                {
                    if pid != own_pid {
                        self.on_conn(pid);
                    }
                }
            }
        }
        self.run_pending(attacher)
    }

    /// A process made a connection: look at it once.
    pub fn on_conn(&mut self, tgid: u32) {
        if self.checked.len() >= MAX_CHECKED {
            self.checked.clear();
        }
        if self.checked.insert(tgid) {
            self.pending.push(tgid);
        }
    }

    /// A process ran a new program: look at it again.
    pub fn on_exec(&mut self, tgid: u32) {
        self.checked.insert(tgid);
        self.pending.push(tgid);
    }

    /// Forgets the processes checked that exited (no `/proc/PID`), so that under churn the set
    /// holds the living ones, not every pid that ever ran.
    pub fn forget_exited(&mut self) {
        self.checked
            .retain(|&pid| Path::new(&format!("/proc/{pid}")).exists());
    }

    /// Sizes of its tables: Go binaries looked at, processes checked and followed.
    pub fn table_sizes(&self) -> [(&'static str, usize); 3] {
        [
            ("go_binaries", self.files.len()),
            ("go_processes_checked", self.checked.len()),
            ("go_processes_followed", self.followed.len()),
        ]
    }

    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Inspects the processes waiting; rows for executables seen for the first time.
    pub fn run_pending(&mut self, attacher: &mut dyn GoAttacher) -> Vec<GoRow> {
        let mut rows = Vec::new();
        for tgid in std::mem::take(&mut self.pending) {
            let exe = format!("/proc/{tgid}/exe");
            let Ok(meta) = std::fs::metadata(&exe) else {
                self.unfollow(tgid, attacher);
                continue;
            };
            let id = (
                meta.dev(),
                meta.ino(),
                meta.ctime_nsec() + meta.ctime() * 1_000_000_000,
            );
            let path = std::fs::read_link(&exe)
                .map(|p| p.display().to_string())
                .unwrap_or_else(|_| exe.clone());
            let binary = match self.files.get(&id) {
                Some(b) => b.clone(),
                None => {
                    let mut b = inspect(Path::new(&exe)).unwrap_or(GoBinary::NotGo);
                    if let GoBinary::Followed { handoffs, .. } = &mut b {
                        handoffs.retain(|h| self.stacks || h.program != "go_owner_stack");
                    }
                    let line = match &b {
                        GoBinary::Followed {
                            version,
                            handoffs,
                            spawn,
                            stripped,
                            grpc,
                            ..
                        } => {
                            let exe = Path::new(&exe);
                            let grpc = match grpc {
                                None => String::new(),
                                Some(Ok(client)) => match attacher.attach_go_grpc(exe, client) {
                                    Ok(()) => ", gRPC client streams followed".to_owned(),
                                    Err(e) => format!(", gRPC client streams not followed: {e}"),
                                },
                                Some(Err(e)) => format!(", gRPC client streams not followed: {e}"),
                            };
                            let spawn =
                                match spawn.as_ref().map(|s| attacher.attach_go_spawn(exe, s)) {
                                    Some(Ok(())) => "goroutine starts followed".to_owned(),
                                    Some(Err(e)) => format!("goroutine starts not followed: {e}"),
                                    None => format!(
                                        "goroutine starts not followed: {NEWPROC} not found"
                                    ),
                                };
                            let stripped = if *stripped {
                                " (stripped: found in .gopclntab)"
                            } else {
                                ""
                            };
                            if handoffs.is_empty() {
                                format!("ok    goroutine {path}: {version}, goroutines followed (no net/http){stripped}, {spawn}{grpc}")
                            } else {
                                match attacher.attach_go_handoffs(exe, handoffs) {
                                    Ok(()) => format!(
                                        "ok    goroutine {path}: {version}, goroutines followed, {} net/http hand-over uprobes{stripped}, {spawn}{grpc}",
                                        handoffs.len(),
                                    ),
                                    Err(e) => format!("FAIL  goroutine {path}: {version}, goroutines followed, net/http hand-overs not probed: {e}; {spawn}{grpc}"),
                                }
                            }
                        }
                        GoBinary::Unsupported(why) => {
                            format!("skip  goroutine {path}: Go program not followed: {why}")
                        }
                        GoBinary::NotGo => String::new(),
                    };
                    if !line.is_empty() {
                        rows.push(GoRow {
                            path,
                            pid: tgid,
                            line,
                        });
                    }
                    self.files.insert(id, b.clone());
                    b
                }
            };
            if let GoBinary::Followed {
                goid_offset,
                stream_spawners,
                ..
            } = binary
            {
                if attacher.follow_go_process(tgid, Some(goid_offset)).is_ok() {
                    self.followed.insert(tgid);
                    match stream_spawners {
                        Some(ranges) => {
                            let ranges = self
                                .spawners_of_file
                                .entry(id)
                                .or_insert_with(|| ranges.into())
                                .clone();
                            self.stream_spawners.insert(tgid, ranges);
                        }
                        None => {
                            self.stream_spawners.remove(&tgid);
                        }
                    }
                }
            } else {
                self.unfollow(tgid, attacher);
            }
        }
        rows
    }

    /// Stops following processes that exited (called every few seconds): a pid reused by a
    /// program that is not Go must not have its syscalls read as goroutines; it is looked at
    /// again on its first connection.
    pub fn reap(&mut self, attacher: &mut dyn GoAttacher) {
        let gone: Vec<u32> = self
            .followed
            .iter()
            .copied()
            .filter(|tgid| !Path::new(&format!("/proc/{tgid}")).exists())
            .collect();
        for tgid in gone {
            self.unfollow(tgid, attacher);
            self.checked.remove(&tgid);
        }
    }

    /// Whether the `go` statement at `pc` in process `tgid` starts the handler of an HTTP/2 or
    /// gRPC stream (`golang::runtime::STREAM_HANDLER_SPAWNERS`); `None` when the process's
    /// are not known.
    pub fn starts_stream_handler(&self, tgid: u32, pc: u64) -> Option<bool> {
        let ranges = self.stream_spawners.get(&tgid)?;
        Some(ranges.iter().any(|&(start, end)| start <= pc && pc < end))
    }

    fn unfollow(&mut self, tgid: u32, attacher: &mut dyn GoAttacher) {
        self.stream_spawners.remove(&tgid);
        if self.followed.remove(&tgid) {
            let _ = attacher.follow_go_process(tgid, None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Fake(Vec<(u32, Option<u32>)>);
    impl GoAttacher for Fake {
        fn attach_go_handoffs(&mut self, _: &Path, _: &[Handoff]) -> Result<(), String> {
            Ok(())
        }
        fn attach_go_spawn(&mut self, _: &Path, _: &Sites) -> Result<(), String> {
            Ok(())
        }
        fn attach_go_grpc(&mut self, _: &Path, _: &GrpcClient) -> Result<(), String> {
            Ok(())
        }
        fn follow_go_process(&mut self, tgid: u32, goid_offset: Option<u32>) -> Result<(), String> {
            self.0.push((tgid, goid_offset));
            Ok(())
        }
    }

    #[test]
    fn exited_processes_stop_being_followed_and_are_looked_at_again() {
        let (gone, alive) = (999_999_999, std::process::id());
        let mut d = GoDiscovery::new(false);
        let mut fake = Fake::default();
        for tgid in [gone, alive] {
            d.followed.insert(tgid);
            d.checked.insert(tgid);
        }
        d.reap(&mut fake);
        assert_eq!(fake.0, vec![(gone, None)]);
        assert!(d.followed.contains(&alive) && !d.followed.contains(&gone));
        d.on_conn(gone);
        assert!(d.has_pending(), "a reused pid is inspected again");
    }
}
