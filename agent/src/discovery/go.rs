//! Go programs: found on each process's first connection (and again after an exec), probed
//! once per executable file, and followed per process (`GO_PROCS`: the kernel then reports the
//! goroutine of each syscall, see `ebpf/src/go`).
//!
//! A Go program is an ELF file with a `.go.buildinfo` section; its Go version (the `go1.N`
//! string there, readable from Go 1.18) must be one whose `runtime.g` layout is known: the
//! goroutine id sits at byte 152 of `g` from Go 1.18 through 1.22 on x86-64, at 160 in Go 1.23
//! (`syscallbp` came before it), see [`goid_offset`]. The net/http hand-over probes
//! ([`HANDOFF_FUNCTIONS`]) attach by function name from the symbol table, or in a stripped
//! program at the file offset of the function's entry found in Go's own function table
//! (`.gopclntab`). `runtime.newproc1` is probed at its entry and at each of its RET instructions (found
//! by decoding its code; never uretprobes) to learn which goroutine started which. It does no ELF work twice for one file (device and inode) and never blocks capture:
//! the pipeline runs it between drains.

use std::{
    collections::{HashMap, HashSet},
    os::unix::fs::MetadataExt as _,
    path::Path,
};

use object::{Object, ObjectSection, ObjectSymbol, ReadCache};

use crate::symbols::gopclntab::PcLnTable;

/// Offset of `goid` in `runtime.g` (amd64) for a Go minor version; `None`: not followed. Read
/// from the DWARF of go1.19.8 and go1.23.5 binaries (`llvm-dwarfdump --name=runtime.g`).
pub fn goid_offset(minor: u32) -> Option<u32> {
    match minor {
        18..=22 => Some(152),
        23 => Some(160),
        _ => None,
    }
}
/// The net/http functions probed at entry (program, function): helpers' entries and their
/// owners' hand-over, see `ebpf/src/go`.
pub const HANDOFF_FUNCTIONS: [(&str, &str); 5] = [
    ("go_helper", "net/http.(*persistConn).writeLoop"),
    ("go_owner", "net/http.(*persistConn).roundTrip"),
    // The issuing goroutine's stack for the request's write on writeLoop (returns at once
    // when stacks are off).
    ("go_owner_stack", "net/http.(*persistConn).roundTrip"),
    ("go_helper", "net/http.(*connReader).backgroundRead"),
    ("go_owner", "net/http.(*connReader).startBackgroundRead"),
];
/// The runtime function that starts goroutines (entry and RETs probed).
pub const NEWPROC: &str = "runtime.newproc1";
/// Processes remembered as checked before the set is cleared (each is then checked again).
const MAX_CHECKED: usize = 65_536;

/// What an executable is, for goroutine following.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GoBinary {
    /// A Go program ztrace follows, with the [`HANDOFF_FUNCTIONS`] it has.
    Followed { version: String, goid_offset: u32, handoffs: Vec<Handoff>, stripped: bool, spawn: Option<Sites> },
    /// A Go program ztrace cannot follow, and why.
    Unsupported(String),
    /// Not a Go program.
    NotGo,
}

/// A hand-over probe to attach: the kernel program and the function, with, in a stripped
/// binary, the file offset of the function's entry (from `.gopclntab`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Handoff {
    pub program: &'static str,
    pub function: &'static str,
    pub offset: Option<u64>,
}

/// Looks at the ELF file at `path`.
pub fn inspect(path: &Path) -> std::io::Result<GoBinary> {
    let file = std::fs::File::open(path)?;
    let cache = ReadCache::new(file);
    let Ok(elf) = object::File::parse(&cache) else { return Ok(GoBinary::NotGo) };
    Ok(classify(&elf))
}

/// Classifies a parsed object file.
pub fn classify<'data, O: Object<'data>>(elf: &O) -> GoBinary {
    let Some(buildinfo) = elf.section_by_name(".go.buildinfo") else { return GoBinary::NotGo };
    if elf.architecture() != object::Architecture::X86_64 {
        return GoBinary::Unsupported("not x86-64".into());
    }
    let Some(version) = buildinfo.data().ok().and_then(crate::tls::go::build_version) else {
        return GoBinary::Unsupported("Go version unknown (before go1.18?): runtime.g layout unknown".into());
    };
    let Some(goid_offset) = crate::tls::go::minor(&version).and_then(goid_offset) else {
        return GoBinary::Unsupported(format!("{version}: runtime.g layout unknown (go1.18 to go1.23 are followed)"));
    };
    let mut handoffs = Vec::new();
    let mut stripped = true;
    for sym in elf.symbols() {
        stripped = false;
        if let Ok(name) = sym.name() {
            handoffs.extend(
                HANDOFF_FUNCTIONS.iter().filter(|(_, f)| *f == name).map(|&(program, function)| Handoff { program, function, offset: None }),
            );
        }
    }
    if stripped {
        handoffs = stripped_handoffs(elf);
    }
    let spawn = if stripped { pclntab_range(elf, NEWPROC) } else { symbol_range(elf, NEWPROC) }.and_then(|(vaddr, size)| entry_and_rets(elf, vaddr, size));
    GoBinary::Followed { version, goid_offset, handoffs, stripped, spawn }
}

/// File offsets of a function's entry and of each of its RET instructions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sites {
    pub entry: u64,
    pub rets: Vec<u64>,
}

/// Address and size of the function `name`, from the symbol table.
fn symbol_range<'data, O: Object<'data>>(elf: &O, name: &str) -> Option<(u64, u64)> {
    let sym = elf.symbols().find(|s| s.name() == Ok(name))?;
    Some((sym.address(), sym.size()))
}

/// Address and size of the function `name` of a stripped binary, from its `.gopclntab` (the
/// size runs to the next function's entry).
fn pclntab_range<'data, O: Object<'data>>(elf: &O, name: &str) -> Option<(u64, u64)> {
    let section = elf.section_by_name(".gopclntab")?;
    let table = PcLnTable::parse(section.data().ok()?.to_vec(), section.address(), &[], None).ok()?;
    let mut entry = None;
    let mut entries = Vec::new();
    table.each_function(|f, at| {
        if f == name {
            entry = Some(at);
        }
        entries.push(at);
    });
    let entry = entry?;
    let next = entries.into_iter().filter(|&at| at > entry).min()?;
    Some((entry, next - entry))
}

/// [`Sites`] of the function at `vaddr` of `size` bytes; `None` without any RET.
fn entry_and_rets<'data, O: Object<'data>>(elf: &O, vaddr: u64, size: u64) -> Option<Sites> {
    let text = elf.sections().find(|s| s.address() <= vaddr && vaddr < s.address() + s.size())?;
    let (file_start, _) = text.file_range()?;
    let to_file = |addr: u64| addr - text.address() + file_start;
    let size = size.min(text.address() + text.size() - vaddr).min(64 * 1024);
    let code = text.data_range(vaddr, size).ok()??;
    let rets: Vec<u64> = crate::tls::go::rets(code, vaddr).into_iter().map(to_file).collect();
    (!rets.is_empty()).then(|| Sites { entry: to_file(vaddr), rets })
}

/// The kernel side of following Go programs (implemented by `bpf::Probes`).
pub trait GoAttacher {
    /// Probes `functions` (of [`HANDOFF_FUNCTIONS`]) in the file at `path`.
    fn attach_go_handoffs(&mut self, path: &Path, functions: &[Handoff]) -> Result<(), String>;
    /// Probes [`NEWPROC`]'s entry and RETs in the file at `path`.
    fn attach_go_spawn(&mut self, path: &Path, sites: &Sites) -> Result<(), String>;
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
}

impl GoDiscovery {
    pub fn new(stacks: bool) -> Self {
        GoDiscovery { stacks, ..Self::default() }
    }

    /// Every running process but `own_pid` (at start: programs already running).
    pub fn scan_at_start(&mut self, own_pid: u32, attacher: &mut dyn GoAttacher) -> Vec<GoRow> {
        if let Ok(entries) = std::fs::read_dir("/proc") {
            for entry in entries.flatten() {
                if let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) {
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
            let id = (meta.dev(), meta.ino(), meta.ctime_nsec() + meta.ctime() * 1_000_000_000);
            let path = std::fs::read_link(&exe).map(|p| p.display().to_string()).unwrap_or_else(|_| exe.clone());
            let binary = match self.files.get(&id) {
                Some(b) => b.clone(),
                None => {
                    let mut b = inspect(Path::new(&exe)).unwrap_or(GoBinary::NotGo);
                    if let GoBinary::Followed { handoffs, .. } = &mut b {
                        handoffs.retain(|h| self.stacks || h.program != "go_owner_stack");
                    }
                    let line = match &b {
                        GoBinary::Followed { version, handoffs, .. } if handoffs.is_empty() => {
                            format!("ok    goroutine {path}: {version}, goroutines followed (no net/http)")
                        }
                        GoBinary::Followed { version, handoffs, spawn, stripped, .. } => {
                            let exe = Path::new(&exe);
                            let spawn = match spawn.as_ref().map(|s| attacher.attach_go_spawn(exe, s)) {
                                Some(Ok(())) => "goroutine starts followed".to_owned(),
                                Some(Err(e)) => format!("goroutine starts not followed: {e}"),
                                None => format!("goroutine starts not followed: {NEWPROC} not found"),
                            };
                            match attacher.attach_go_handoffs(exe, handoffs) {
                                Ok(()) => format!(
                                    "ok    goroutine {path}: {version}, goroutines followed, {} net/http hand-over uprobes{}, {spawn}",
                                    handoffs.len(),
                                    if *stripped { " (stripped: found in .gopclntab)" } else { "" }
                                ),
                                Err(e) => format!("FAIL  goroutine {path}: {version}, goroutines followed, net/http hand-overs not probed: {e}; {spawn}"),
                            }
                        }
                        GoBinary::Unsupported(why) => format!("skip  goroutine {path}: Go program not followed: {why}"),
                        GoBinary::NotGo => String::new(),
                    };
                    if !line.is_empty() {
                        rows.push(GoRow { path, pid: tgid, line });
                    }
                    self.files.insert(id, b.clone());
                    b
                }
            };
            if let GoBinary::Followed { goid_offset, .. } = binary {
                if attacher.follow_go_process(tgid, Some(goid_offset)).is_ok() {
                    self.followed.insert(tgid);
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
        let gone: Vec<u32> = self.followed.iter().copied().filter(|tgid| !Path::new(&format!("/proc/{tgid}")).exists()).collect();
        for tgid in gone {
            self.unfollow(tgid, attacher);
            self.checked.remove(&tgid);
        }
    }

    fn unfollow(&mut self, tgid: u32, attacher: &mut dyn GoAttacher) {
        if self.followed.remove(&tgid) {
            let _ = attacher.follow_go_process(tgid, None);
        }
    }
}

/// The hand-over functions of a stripped binary, found in its `.gopclntab`, at file offsets.
fn stripped_handoffs<'data, O: Object<'data>>(elf: &O) -> Vec<Handoff> {
    let Some(section) = elf.section_by_name(".gopclntab") else { return Vec::new() };
    let Ok(data) = section.data() else { return Vec::new() };
    let table = match PcLnTable::parse(data.to_vec(), section.address(), &[], None) {
        Ok(t) => t,
        Err(error) => {
            tracing::debug!(%error, "stripped Go binary: unreadable .gopclntab");
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    table.each_function(|name, entry| {
        for &(program, function) in HANDOFF_FUNCTIONS.iter().filter(|(_, f)| *f == name) {
            let text = elf.sections().find(|s| s.address() <= entry && entry < s.address() + s.size());
            if let Some((text_addr, (file_start, _))) = text.and_then(|t| Some((t.address(), t.file_range()?))) {
                out.push(Handoff { program, function, offset: Some(entry - text_addr + file_start) });
            }
        }
    });
    out
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

    #[test]
    fn goid_offsets_by_go_version() {
        assert_eq!(goid_offset(17), None);
        assert_eq!(goid_offset(19), Some(152));
        assert_eq!(goid_offset(23), Some(160));
        assert_eq!(goid_offset(24), None);
    }

    #[test]
    fn the_test_binary_is_not_go() {
        let exe = std::env::current_exe().expect("exe");
        assert_eq!(inspect(&exe).expect("inspect"), GoBinary::NotGo);
    }
}
