//! Finding the TLS libraries of every process and asking for probes on them, once per file.
//!
//! Sources: the usual system directories for `libssl.so.*` (probed at start, so that a client
//! started later is covered from its first call), the memory maps of every running process
//! (`/proc/*/maps`: shared `libssl`, and executables with OpenSSL linked in, like Node.js), and
//! later processes: re-checked on exec (their new executable) and on their first connection
//! (by then `ld.so` has mapped their libraries). A uprobe on a file fires in every process that
//! maps it, so each file (device and inode) is looked at and probed once.
//!
//! Probes on a file found in a process (not in the system directories at start) are detached
//! once no process has mapped it for `--tls-detach-after` ([`TlsDiscovery::reap`]), and
//! attached again if a later process maps it.
//!
//! Every file that carries a TLS implementation gets a row in the attach table: probed, or not
//! and why (a Go version whose struct offsets are unknown, Java's TLS inside the JVM). Files are
//! classified by `elf` (Go binaries by `go`); probes are attached through an [`Attacher`] (the
//! kernel side lives in `bpf/`).

pub mod elf;
/// Go's `crypto/tls`, as `golang::tls` knows it (the name the attacher's users know it by).
pub use crate::golang::tls as go;

use std::{
    collections::{HashMap, HashSet},
    fmt,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use self::elf::TlsLib;

/// Attaches the TLS probes to a file (implemented by `bpf::Probes`). `key` names the file for
/// [`Attacher::detach`].
pub trait Attacher {
    /// Probes `functions` of the ELF file at `path` (entry and return). Returns how many probes
    /// were attached, or why none could be (then none is left attached).
    fn attach_openssl(
        &mut self,
        key: u64,
        path: &Path,
        functions: &[&'static str],
    ) -> Result<usize, String>;
    /// Probes the entries and RET instructions of Go's `crypto/tls` functions in `path`; the
    /// entry probes carry `cookie` (the binary's struct offsets, `GoOffsets::cookie`).
    fn attach_go(
        &mut self,
        key: u64,
        path: &Path,
        functions: &[go::GoFunction],
        cookie: u64,
    ) -> Result<usize, String>;
    /// Detaches every probe attached under `key`; returns how many.
    fn detach(&mut self, key: u64) -> usize;
}

/// What was done with one file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Probes attached.
    Probed {
        functions: Vec<&'static str>,
        probes: usize,
    },
    /// A TLS implementation ztrace does not probe, and why.
    NotProbed(String),
    /// Probing was tried and failed.
    Failed(String),
}

/// One row of the TLS part of the attach table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    /// The file as the first process that mapped it names it.
    pub path: String,
    /// What it is: "OpenSSL (shared library)", "OpenSSL linked into the executable", "Go", "Java".
    pub what: &'static str,
    pub outcome: Outcome,
    /// The process it was found in (0: found in a system library directory).
    pub pid: u32,
}

/// The parent of process `pid` (`/proc/PID/stat`'s fourth field), if it is still there.
fn parent_of(pid: u32) -> Option<u32> {
    crate::discovery::read_stat_field(Path::new("/proc"), pid, 4)
        .and_then(|p| u32::try_from(p).ok())
}

/// The TLS part of the attach table, as printed at start.
pub fn render(rows: &[Row]) -> String {
    let mut out = String::from("TLS libraries:");
    if rows.is_empty() {
        out.push_str("\n  none found yet (processes started later are looked at on exec and on their first connection)");
    }
    for row in rows {
        out.push_str("\n  ");
        out.push_str(&row.to_string());
    }
    out
}

impl fmt::Display for Row {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.outcome {
            Outcome::Probed { functions, probes } => write!(
                f,
                "ok    uprobes   {} {}: {} probes on {}",
                self.what,
                self.path,
                probes,
                functions.join(", ")
            ),
            Outcome::NotProbed(why) => {
                write!(f, "skip  uprobes   {} {}: {why}", self.what, self.path)
            }
            Outcome::Failed(why) => write!(f, "FAIL  uprobes   {} {}: {why}", self.what, self.path),
        }
    }
}

/// Identity of a file: device and inode (as `/proc/PID/maps` prints them).
type FileId = (String, u64);

/// The processes of one probed file.
struct Users {
    id: FileId,
    pids: HashSet<u32>,
    unused_since: Option<Instant>,
}

/// Processes remembered as checked before the set is cleared (each is then checked again once).
const MAX_CHECKED: usize = 65_536;

/// Directories searched for a system `libssl.so.*` at start.
const SYSTEM_LIB_DIRS: &[&str] = &[
    "/usr/lib/x86_64-linux-gnu",
    "/lib/x86_64-linux-gnu",
    "/usr/lib64",
    "/lib64",
    "/usr/lib",
    "/usr/local/lib",
    "/usr/local/lib64",
];

/// The TLS libraries found so far and the processes already looked at.
#[derive(Default)]
pub struct TlsDiscovery {
    /// Every file looked at (also those without TLS), so each is inspected once.
    files: HashMap<FileId, Option<usize>>,
    /// Probed files found in processes, by row: the file, the processes seen mapping it, and
    /// since when none has.
    users: HashMap<usize, Users>,
    pub rows: Vec<Row>,
    checked: HashSet<u32>,
    /// Processes that ran an executable while ztrace runs (the others it did not see at start
    /// are forks that kept their parent's).
    execed: HashSet<u32>,
    /// Processes to look at: `true` for every executable mapping (`/proc/PID/maps`), `false`
    /// for the executable alone.
    pending: Vec<(u32, bool)>,
    own_pid: u32,
}

impl TlsDiscovery {
    pub fn new(own_pid: u32) -> Self {
        TlsDiscovery {
            own_pid,
            ..Default::default()
        }
    }

    /// Probes the system's `libssl.so.*` files and every running process's TLS libraries.
    pub fn scan_at_start(&mut self, attacher: &mut dyn Attacher) {
        for dir in SYSTEM_LIB_DIRS {
            let Ok(entries) = std::fs::read_dir(dir) else {
                continue;
            };
            let mut names: Vec<PathBuf> = entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(is_libssl_name)
                })
                .collect();
            names.sort();
            for path in names {
                let Ok(meta) = std::fs::metadata(&path) else {
                    continue;
                };
                if !meta.is_file() {
                    continue;
                }
                use std::os::unix::fs::MetadataExt as _;
                let id = (dev_string(meta.dev()), meta.ino());
                // libssl.so is usually a link to libssl.so.3: show the file itself.
                let real = std::fs::canonicalize(&path).unwrap_or(path);
                self.look_at(id, &real, &real.to_string_lossy(), 0, attacher);
            }
        }
        let Ok(procs) = std::fs::read_dir("/proc") else {
            return;
        };
        for entry in procs.flatten() {
            if let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            {
                self.checked.insert(pid);
                self.check_process(pid, attacher);
            }
        }
    }

    /// A process ran a new executable: look at it now, and at its libraries on its first
    /// connection. (Only the executable now: `ld.so` may not have mapped the libraries yet,
    /// and reading the maps of each new process twice was a third of the agent's CPU under
    /// process churn.)
    pub fn on_exec(&mut self, tgid: u32) {
        self.checked.remove(&tgid);
        if self.execed.len() >= MAX_CHECKED {
            self.execed.clear();
        }
        self.execed.insert(tgid);
        self.queue(tgid, false);
    }

    /// A connection of `tgid` was announced: look at its libraries the first time — unless it
    /// is a fork that ran no executable of its own and its parent's libraries were looked at
    /// (a PostgreSQL backend, a pre-forked worker): it maps the same files, and a uprobe on a
    /// file fires in every process that maps it. Reading `/proc/PID/maps` of every backend a
    /// connection pool opens was a third of the agent's CPU. (A library such a fork loads
    /// later, that no process looked at had, goes unprobed.) Returns true for such a fork.
    pub fn on_conn(&mut self, tgid: u32) -> bool {
        self.on_conn_with(tgid, parent_of)
    }

    fn on_conn_with(&mut self, tgid: u32, parent_of: impl Fn(u32) -> Option<u32>) -> bool {
        if self.checked.len() >= MAX_CHECKED {
            self.checked.clear();
        }
        if !self.checked.insert(tgid) {
            return false;
        }
        let forked_from_checked = !self.execed.contains(&tgid)
            && parent_of(tgid).is_some_and(|parent| self.checked.contains(&parent));
        if !forked_from_checked {
            self.queue(tgid, true);
        }
        forked_from_checked
    }

    fn queue(&mut self, tgid: u32, maps: bool) {
        if tgid == self.own_pid {
            return;
        }
        match self.pending.iter_mut().find(|(pid, _)| *pid == tgid) {
            Some((_, queued)) => *queued |= maps,
            None => self.pending.push((tgid, maps)),
        }
    }

    /// Forgets the processes that exited (no `/proc/PID`), so that under churn the set of
    /// processes checked holds the living ones, not every pid that ever ran.
    pub fn forget_exited(&mut self) {
        let alive = |pid: &u32| Path::new(&format!("/proc/{pid}")).exists();
        self.checked.retain(alive);
        self.execed.retain(alive);
    }

    /// True when processes wait to be looked at.
    /// Sizes of its tables: files looked at, processes checked.
    pub fn table_sizes(&self) -> [(&'static str, usize); 3] {
        [
            ("tls_files", self.files.len()),
            ("tls_processes_checked", self.checked.len()),
            ("tls_processes_execed", self.execed.len()),
        ]
    }

    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Looks at the queued processes; returns the rows added.
    pub fn run_pending(&mut self, attacher: &mut dyn Attacher) -> Vec<Row> {
        let before = self.rows.len();
        for (pid, maps) in std::mem::take(&mut self.pending) {
            if maps {
                self.check_process(pid, attacher);
            } else {
                self.check_executable(pid, attacher);
            }
        }
        self.rows[before..].to_vec()
    }

    /// Looks at the executable of one process (OpenSSL linked in, Go's crypto/tls).
    fn check_executable(&mut self, pid: u32, attacher: &mut dyn Attacher) {
        if pid == self.own_pid {
            return;
        }
        use std::os::unix::fs::MetadataExt as _;
        let link = format!("/proc/{pid}/exe");
        let (Ok(exe), Ok(meta)) = (std::fs::read_link(&link), std::fs::metadata(&link)) else {
            return;
        };
        let Some(shown) = exe.to_str() else { return };
        let id = (dev_string(meta.dev()), meta.ino());
        let path = self.readable_path(pid, shown, &id);
        self.look_at(id, &path, shown, pid, attacher);
    }

    /// Where the agent reads a file that process `pid` maps at `path`: that path when the same
    /// file is there in the agent's view, else through the process's root (right inside
    /// containers too). A short-lived process's root is gone once it exits.
    fn readable_path(&self, pid: u32, path: &str, id: &FileId) -> PathBuf {
        let same_here = std::fs::metadata(path).is_ok_and(|meta| {
            use std::os::unix::fs::MetadataExt as _;
            meta.ino() == id.1 && dev_string(meta.dev()) == id.0
        });
        if same_here {
            PathBuf::from(path)
        } else {
            PathBuf::from(format!("/proc/{pid}/root{path}"))
        }
    }

    /// Looks at the executable and executable mappings of one process.
    fn check_process(&mut self, pid: u32, attacher: &mut dyn Attacher) {
        if pid == self.own_pid {
            return;
        }
        let Ok(maps) = std::fs::read_to_string(format!("/proc/{pid}/maps")) else {
            return;
        };
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok();
        for m in parse_maps(&maps) {
            let basename = m.path.rsplit('/').next().unwrap_or(m.path);
            let is_exe = exe.as_deref().is_some_and(|e| e == Path::new(m.path));
            if !(is_exe || is_libssl_name(basename) || basename.starts_with("libjvm.so")) {
                continue;
            }
            let id = (m.dev.to_owned(), m.inode);
            let through_root = self.readable_path(pid, m.path, &id);
            if basename.starts_with("libjvm.so") {
                if !self.files.contains_key(&id) {
                    let row = Row {
                        path: m.path.to_owned(),
                        what: "Java",
                        outcome: Outcome::NotProbed(
                            "the JVM encrypts in Java (JSSE), with no native TLS library to probe: its HTTPS is not traced"
                                .into(),
                        ),
                        pid,
                    };
                    self.files.insert(id, Some(self.rows.len()));
                    self.rows.push(row);
                }
                continue;
            }
            self.look_at(id, &through_root, m.path, pid, attacher);
        }
    }

    /// Inspects a file not seen before and probes it if it carries OpenSSL.
    fn look_at(
        &mut self,
        id: FileId,
        path: &Path,
        shown: &str,
        pid: u32,
        attacher: &mut dyn Attacher,
    ) {
        if let Some(known) = self.files.get(&id) {
            if let Some(users) = known.and_then(|row| self.users.get_mut(&row)) {
                users.pids.insert(pid);
                users.unused_since = None;
            }
            return;
        }
        let key = self.rows.len();
        let lib = match elf::inspect(path) {
            Ok(lib) => lib,
            Err(e) => {
                tracing::debug!(path = %path.display(), error = %e, "could not read a candidate TLS library");
                return; // not remembered: tried again when another process maps it
            }
        };
        let libssl = Path::new(shown)
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(is_libssl_name);
        let row = match lib {
            TlsLib::None => {
                self.files.insert(id, None);
                return;
            }
            TlsLib::OpenSsl { functions } => {
                let what = if libssl {
                    "OpenSSL (shared library)"
                } else {
                    "OpenSSL linked into the executable"
                };
                let outcome = match attacher.attach_openssl(key as u64, path, &functions) {
                    Ok(probes) => Outcome::Probed { functions, probes },
                    Err(e) => Outcome::Failed(e),
                };
                Row {
                    path: shown.to_owned(),
                    what,
                    outcome,
                    pid,
                }
            }
            TlsLib::Go(go) => {
                let what = match (&go.version, go.stripped) {
                    (_, true) => "Go crypto/tls (stripped, symbols from .gopclntab)",
                    (_, false) => "Go crypto/tls",
                };
                let version = go
                    .version
                    .clone()
                    .unwrap_or_else(|| "version unknown".into());
                let outcome = match go.unsupported() {
                    Some(why) => {
                        Outcome::NotProbed(format!("{why}: its TLS traffic is not traced"))
                    }
                    None => match attacher.attach_go(
                        key as u64,
                        path,
                        &go.functions,
                        go.offsets().0.cookie(),
                    ) {
                        Ok(probes) => Outcome::Probed {
                            functions: go.functions.iter().map(|f| f.name).collect(),
                            probes,
                        },
                        Err(e) => Outcome::Failed(e),
                    },
                };
                let source = go.offsets().1.describe();
                Row {
                    path: format!("{shown} ({version}, {source})"),
                    what,
                    outcome,
                    pid,
                }
            }
        };
        if pid != 0 && matches!(row.outcome, Outcome::Probed { .. }) {
            self.users.insert(
                key,
                Users {
                    id: id.clone(),
                    pids: HashSet::from([pid]),
                    unused_since: None,
                },
            );
        }
        self.files.insert(id, Some(key));
        self.rows.push(row);
    }

    /// Detaches the probes of files no process has mapped for `after` (their users exited, and a
    /// last look at every process's maps finds none); the file is forgotten, so a later process
    /// that maps it gets it probed again. Returns a line per file detached.
    pub fn reap(
        &mut self,
        attacher: &mut dyn Attacher,
        now: Instant,
        after: Duration,
    ) -> Vec<String> {
        let mut unused: Vec<usize> = Vec::new();
        for (row, users) in self.users.iter_mut() {
            users
                .pids
                .retain(|pid| Path::new(&format!("/proc/{pid}")).exists());
            if !users.pids.is_empty() {
                users.unused_since = None;
                continue;
            }
            let since = *users.unused_since.get_or_insert(now);
            if now.saturating_duration_since(since) >= after {
                unused.push(*row);
            }
        }
        if unused.is_empty() {
            return Vec::new();
        }
        // A process may map the file without having been looked at (forked, no connection yet).
        let wanted: HashMap<FileId, usize> = unused
            .iter()
            .filter_map(|row| Some((self.users.get(row)?.id.clone(), *row)))
            .collect();
        for (pid, id) in processes_mapping(&wanted) {
            if let Some(users) = wanted.get(&id).and_then(|row| self.users.get_mut(row)) {
                users.pids.insert(pid);
                users.unused_since = None;
            }
        }
        let mut lines = Vec::new();
        for row in unused {
            if self.users.get(&row).is_none_or(|u| !u.pids.is_empty()) {
                continue;
            }
            let Some(users) = self.users.remove(&row) else {
                continue;
            };
            let detached = attacher.detach(row as u64);
            self.files.remove(&users.id);
            let r = &self.rows[row];
            lines.push(format!(
                "detached {detached} probes from {} {}: no process has mapped it for {after:?}",
                r.what, r.path
            ));
        }
        lines
    }
}

/// The processes (pid, file) that map any of `wanted` executable, from every `/proc/PID/maps`.
fn processes_mapping(wanted: &HashMap<FileId, usize>) -> Vec<(u32, FileId)> {
    let mut found = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in procs.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(maps) = std::fs::read_to_string(format!("/proc/{pid}/maps")) else {
            continue;
        };
        for m in parse_maps(&maps) {
            let id = (m.dev.to_owned(), m.inode);
            if wanted.contains_key(&id) {
                found.push((pid, id));
            }
        }
    }
    found
}

/// `libssl.so`, `libssl.so.3`, `libssl.so.1.1` (not `libssl3.so`, NSS's).
fn is_libssl_name(name: &str) -> bool {
    name.starts_with("libssl.so")
}

/// A device number as `/proc/PID/maps` prints it (`major:minor`, hex).
fn dev_string(dev: u64) -> String {
    format!("{:02x}:{:02x}", libc::major(dev), libc::minor(dev))
}

/// One executable file mapping of `/proc/PID/maps`.
#[derive(Debug, PartialEq, Eq)]
struct Mapping<'a> {
    dev: &'a str,
    inode: u64,
    path: &'a str,
}

/// The distinct executable file mappings of a maps file (deleted files and anonymous or special
/// mappings left out).
fn parse_maps(text: &str) -> Vec<Mapping<'_>> {
    let mut out: Vec<Mapping<'_>> = Vec::new();
    for line in text.lines() {
        let mut fields = line.split_ascii_whitespace();
        let (Some(_range), Some(perms), Some(_offset), Some(dev), Some(inode)) = (
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
        ) else {
            continue;
        };
        let Some(path) = fields.next() else { continue };
        if fields.next().is_some()
            || !path.starts_with('/')
            || perms.as_bytes().get(2) != Some(&b'x')
        {
            continue; // "(deleted)" suffix, [vdso], non-executable
        }
        let Ok(inode) = inode.parse::<u64>() else {
            continue;
        };
        if inode == 0 || out.iter().any(|m| m.inode == inode && m.dev == dev) {
            continue;
        }
        out.push(Mapping { dev, inode, path });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAPS: &str = "\
55d0c8a00000-55d0c8a28000 r--p 00000000 fd:01 1835102                    /usr/bin/curl
55d0c8a28000-55d0c8a3d000 r-xp 00028000 fd:01 1835102                    /usr/bin/curl
7f1d2c000000-7f1d2c021000 rw-p 00000000 00:00 0
7f1d2d1a0000-7f1d2d1bc000 r--p 00000000 fd:01 1839420                    /usr/lib/x86_64-linux-gnu/libssl.so.3
7f1d2d1bc000-7f1d2d218000 r-xp 0001c000 fd:01 1839420                    /usr/lib/x86_64-linux-gnu/libssl.so.3
7f1d2d300000-7f1d2d318000 r-xp 00000000 fd:01 1839421                    /tmp/gone.so (deleted)
7ffd4b3e1000-7ffd4b3e3000 r-xp 00000000 00:00 0                          [vdso]
";

    #[test]
    fn maps_give_each_executable_file_once() {
        let m = parse_maps(MAPS);
        assert_eq!(
            m,
            vec![
                Mapping {
                    dev: "fd:01",
                    inode: 1835102,
                    path: "/usr/bin/curl"
                },
                Mapping {
                    dev: "fd:01",
                    inode: 1839420,
                    path: "/usr/lib/x86_64-linux-gnu/libssl.so.3"
                },
            ]
        );
        assert!(parse_maps("garbage\n\n1 2 3\n").is_empty());
    }

    #[test]
    fn a_fork_of_a_process_looked_at_is_not_read_again_but_an_exec_is() {
        let mut tls = TlsDiscovery::new(1);
        let parent = |pid: u32| Some(if pid >= 100 { 10 } else { 1 });
        // 10 (the postmaster, say) gets a connection: its maps are read.
        assert!(!tls.on_conn_with(10, parent));
        assert_eq!(tls.pending, [(10, true)]);
        tls.pending.clear();
        // 100, forked by 10, ran no executable: not read, counted.
        assert!(tls.on_conn_with(100, parent));
        assert!(tls.pending.is_empty());
        // 101 forked by 10 then ran an executable: its executable at once, its maps at its
        // first connection.
        tls.on_exec(101);
        assert_eq!(tls.pending, [(101, false)]);
        assert!(!tls.on_conn_with(101, parent));
        assert_eq!(tls.pending, [(101, true)]);
        tls.pending.clear();
        // A process whose parent was never looked at (or is gone) is read.
        assert!(!tls.on_conn_with(20, |_| Some(2)));
        assert!(!tls.on_conn_with(21, |_| None));
        assert_eq!(tls.pending, [(20, true), (21, true)]);
        // Each process once.
        assert!(!tls.on_conn_with(100, parent));
    }

    #[test]
    fn the_parent_comes_from_proc_stat() {
        let me = std::process::id();
        let expected = std::os::unix::process::parent_id();
        assert_eq!(parent_of(me), Some(expected));
        assert_eq!(parent_of(u32::MAX), None);
    }

    #[test]
    fn libssl_names() {
        assert!(is_libssl_name("libssl.so.3"));
        assert!(is_libssl_name("libssl.so.1.1"));
        assert!(!is_libssl_name("libssl3.so"));
        assert!(!is_libssl_name("libcrypto.so.3"));
    }

    struct Recorder(Vec<(PathBuf, Vec<&'static str>)>, Vec<u64>);
    impl Attacher for Recorder {
        fn attach_openssl(
            &mut self,
            _key: u64,
            path: &Path,
            functions: &[&'static str],
        ) -> Result<usize, String> {
            self.0.push((path.to_owned(), functions.to_vec()));
            Ok(functions
                .iter()
                .map(|f| {
                    if crate::bpf::attach::OPENSSL_ENTRY_ONLY.contains(f) {
                        1
                    } else {
                        2
                    }
                })
                .sum())
        }
        fn attach_go(
            &mut self,
            _key: u64,
            _path: &Path,
            functions: &[go::GoFunction],
            _cookie: u64,
        ) -> Result<usize, String> {
            Ok(functions.iter().map(|f| 1 + f.rets.len()).sum())
        }
        fn detach(&mut self, key: u64) -> usize {
            self.1.push(key);
            7
        }
    }

    #[test]
    fn each_file_is_probed_once_and_gets_a_row() {
        let path = Path::new("/usr/lib/x86_64-linux-gnu/libssl.so.3");
        if !path.exists() {
            return;
        }
        let mut d = TlsDiscovery::new(1);
        let mut rec = Recorder(Vec::new(), Vec::new());
        d.look_at(
            ("fd:01".into(), 7),
            path,
            "/usr/lib/x86_64-linux-gnu/libssl.so.3",
            0,
            &mut rec,
        );
        d.look_at(
            ("fd:01".into(), 7),
            path,
            "/usr/lib/x86_64-linux-gnu/libssl.so.3",
            0,
            &mut rec,
        );
        assert_eq!(rec.0.len(), 1);
        assert_eq!(d.rows.len(), 1);
        assert!(d.rows[0].to_string().starts_with("ok    uprobes   OpenSSL (shared library) /usr/lib/x86_64-linux-gnu/libssl.so.3: 9 probes"));
    }

    #[test]
    fn a_file_whose_processes_all_exited_is_detached_and_probed_again_later() {
        let path = Path::new("/usr/lib/x86_64-linux-gnu/libssl.so.3");
        if !path.exists() {
            return;
        }
        // A file identity no process maps, so that only the users this test adds count.
        let id: FileId = ("ff:ff".into(), 424242);
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("spawn sleep");
        let pid = child.id();
        let mut d = TlsDiscovery::new(1);
        let mut rec = Recorder(Vec::new(), Vec::new());
        d.look_at(id.clone(), path, "/opt/app/libssl.so.3", pid, &mut rec);
        assert_eq!(rec.0.len(), 1);
        let after = Duration::from_secs(60);
        let t0 = Instant::now();
        assert!(
            d.reap(&mut rec, t0, after).is_empty(),
            "its process still runs"
        );
        assert!(rec.1.is_empty());
        child.kill().expect("kill");
        child.wait().expect("wait");
        assert!(
            d.reap(&mut rec, t0 + Duration::from_secs(1), after)
                .is_empty(),
            "unused from now on"
        );
        assert!(
            d.reap(&mut rec, t0 + Duration::from_secs(60), after)
                .is_empty(),
            "not for long enough yet"
        );
        assert!(rec.1.is_empty());
        let lines = d.reap(&mut rec, t0 + Duration::from_secs(61), after);
        assert_eq!(rec.1, vec![0], "the file's probes are detached by its key");
        assert_eq!(lines, vec!["detached 7 probes from OpenSSL (shared library) /opt/app/libssl.so.3: no process has mapped it for 60s".to_string()]);
        assert!(
            d.reap(&mut rec, t0 + Duration::from_secs(200), after)
                .is_empty(),
            "once"
        );
        // A later process maps it again: probed again, under a new key.
        d.look_at(
            id,
            path,
            "/opt/app/libssl.so.3",
            std::process::id(),
            &mut rec,
        );
        assert_eq!(rec.0.len(), 2);
        assert_eq!(d.rows.len(), 2);
        // Files found in the system directories at start (pid 0) stay probed.
        let mut d = TlsDiscovery::new(1);
        d.look_at(
            ("ff:fe".into(), 1),
            path,
            "/usr/lib/x86_64-linux-gnu/libssl.so.3",
            0,
            &mut rec,
        );
        assert!(d
            .reap(&mut rec, t0 + Duration::from_secs(1000), after)
            .is_empty());
    }

    #[test]
    fn processes_are_queued_once_until_they_exec() {
        let mut d = TlsDiscovery::new(1);
        d.on_conn(5);
        d.on_conn(5);
        d.on_conn(1); // ztrace itself
        assert_eq!(d.pending, vec![(5, true)]);
        d.pending.clear();
        d.on_conn(5);
        assert!(d.pending.is_empty());
        // An exec: its executable at once, its libraries at its next first connection.
        d.on_exec(5);
        assert_eq!(d.pending, vec![(5, false)]);
        d.on_conn(5);
        assert_eq!(d.pending, vec![(5, true)]);
        d.pending.clear();
        d.on_conn(5);
        assert!(d.pending.is_empty());
    }
}
