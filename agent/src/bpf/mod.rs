//! Loading the kernel programs, attaching them, and reading what they send.
//!
//! This is the only module of the agent with `unsafe` (in `events`): everything the kernel
//! sends is decoded here into typed values. The eBPF object is embedded in the binary at build
//! time (see build.rs); offsets of kernel structs come from the running kernel's BTF.

pub mod attach;
pub mod btf;
pub mod caps;
pub mod events;
pub mod fill;
pub mod standin;
pub mod verifier;

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use aya::{
    maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray, ProgramArray, RingBuf, SockHash},
    programs::{
        uprobe::{UProbeAttachPoint, UProbeLinkId, UProbeScope},
        CgroupAttachMode, Program, ProgramError, SkMsg, SockOps, TracePoint, UProbe,
    },
    Ebpf, EbpfLoader,
};
use ztrace_common::{
    globals, maps, Counter, Settings, StackSettings, IOVECS_MORE_PROGRAM, MAX_CAPTURE,
    MAX_STACK_BYTES, READ_IDS_PROGRAMS, SAVED_EXIT_PROGRAM, TLS_READ_EMIT_PROGRAM,
    TLS_TRACEPARENT_PROGRAM, TRACEPARENT_PROGRAM,
};

use self::attach::{
    AttachResult, Injection, Propagation, GO_PROBES, GO_RETURN, HOOKS, INJECT, INJECT_WRITE,
    OPENSSL_ENTRY_ONLY, OPENSSL_PROBES, OPENSSL_RETURN, SOCK_OPS, SOCK_OPS_OPTION,
};

/// The eBPF object, embedded by build.rs (empty when built without `cargo xtask build`).
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/ztrace.bpf.o"));

/// Why the kernel programs could not be started. Each message is one sentence for the user.
#[derive(Debug, thiserror::Error)]
pub enum BpfError {
    #[error("ztrace needs root (CAP_BPF, CAP_PERFMON and CAP_SYS_PTRACE): run it with sudo")]
    NotRoot,
    #[error("{0}")]
    MissingCapability(&'static str),
    #[error(
        "this ztrace binary was built without its eBPF programs: build it with `cargo xtask build`"
    )]
    NoObject,
    #[error("the running kernel does not describe itself with BTF (/sys/kernel/btf/vmlinux, Linux >= 5.4 with CONFIG_DEBUG_INFO_BTF=y), which ztrace needs: {0}")]
    Btf(#[from] btf::BtfError),
    #[error("the kernel refused ztrace's eBPF programs (is BPF enabled and allowed here?): {0}")]
    Load(#[from] aya::EbpfError),
    #[error("program {program} is missing from the eBPF object (stale build?)")]
    MissingProgram { program: &'static str },
    #[error("map {0} is missing from the eBPF object (stale build?)")]
    MissingMap(&'static str),
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        source: aya::maps::MapError,
    },
    #[error("--cgroup {}: {reason}", path.display())]
    Cgroup { path: PathBuf, reason: String },
    #[error("required hooks could not be attached, see the attach table above")]
    RequiredHooks,
    #[error("this kernel ({release}) is too old: ztrace needs Linux {}.{} or newer (BTF, the BPF ring buffer, bpf_get_current_task_btf and bpf_task_pt_regs)", MIN_KERNEL.0, MIN_KERNEL.1)]
    KernelTooOld { release: String },
}

/// The oldest kernel whose verifier and helpers the programs need (`bpf_task_pt_regs`, 5.15).
/// Tested in qemu on Debian's 6.1 and 6.12 and on 6.18; 5.10 is refused with a sentence.
pub const MIN_KERNEL: (u32, u32) = (5, 15);

/// What the user asked to trace.
#[derive(Clone, Debug, Default)]
pub struct Selection {
    /// Only these processes (`--pid`)...
    pub pids: Vec<u32>,
    /// ...and processes whose executable name is one of these (`--exe`). Both empty: all.
    pub exe_names: Vec<String>,
    /// Only processes that are members of this cgroup v2 directory (`--cgroup`), as a simulated
    /// host or a pod is: combines with the two above.
    pub cgroup: Option<PathBuf>,
}

impl Selection {
    /// What is traced, in words, for the start-up log: everything, or what `--pid`/`--exe` chose.
    pub fn describe(&self) -> String {
        let list = |items: Vec<String>| match items.as_slice() {
            [] => String::new(),
            [one] => one.clone(),
            [init @ .., last] => format!("{} and {last}", init.join(", ")),
        };
        let pids = match self.pids.as_slice() {
            [] => None,
            [pid] => Some(format!("process {pid}")),
            pids => Some(format!(
                "processes {}",
                list(pids.iter().map(u32::to_string).collect())
            )),
        };
        let names = (!self.exe_names.is_empty()).then(|| {
            let names = self.exe_names.iter().map(|name| {
                // The kernel matches its 15-byte process name.
                let comm = String::from_utf8_lossy(&comm_key(name))
                    .trim_end_matches('\0')
                    .to_owned();
                if comm == *name {
                    name.clone()
                } else {
                    format!("{name} (matched as {comm})")
                }
            });
            format!("processes named {}", list(names.collect()))
        });
        let chosen = match (pids, names) {
            (None, None) => None,
            (Some(p), None) => Some(format!("{p} (--pid)")),
            (None, Some(n)) => Some(format!("{n} (--exe)")),
            (Some(p), Some(n)) => Some(format!("{p} and {n} (--pid, --exe)")),
        };
        match (chosen, &self.cgroup) {
            (None, None) => "tracing every process on this host except ztrace itself".to_owned(),
            (Some(c), None) => format!("tracing only {c}"),
            (None, Some(g)) => format!(
                "tracing only the processes of cgroup {} (--cgroup)",
                g.display()
            ),
            (Some(c), Some(g)) => format!(
                "tracing only {c} among the processes of cgroup {} (--cgroup)",
                g.display()
            ),
        }
    }

    /// The cgroup v2 id of `--cgroup` (the inode number of its directory), which the kernel
    /// programs compare with `bpf_get_current_cgroup_id`; 0 without `--cgroup`.
    pub fn cgroup_id(&self) -> Result<u64, BpfError> {
        let Some(path) = &self.cgroup else {
            return Ok(0);
        };
        let bad = |reason: String| BpfError::Cgroup {
            path: path.clone(),
            reason,
        };
        let meta = std::fs::metadata(path).map_err(|e| bad(e.to_string()))?;
        if !meta.is_dir() || !path.join("cgroup.procs").exists() {
            return Err(bad("not a cgroup directory (no cgroup.procs)".into()));
        }
        if !cgroup_v2_root_of(path) {
            return Err(bad(
                "not on a cgroup v2 file system (the kernel's cgroup id is the v2 one)".into(),
            ));
        }
        Ok(std::os::unix::fs::MetadataExt::ino(&meta))
    }
}

const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

/// True when `path` is on a cgroup v2 file system.
fn cgroup_v2_root_of(path: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs writes into the zeroed struct we pass and reads the NUL-terminated path.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    (unsafe { libc::statfs(c.as_ptr(), &mut st) } == 0) && st.f_type as i64 == CGROUP2_SUPER_MAGIC
}

/// The root of the cgroup v2 hierarchy (`/sys/fs/cgroup` on v2 hosts, `/sys/fs/cgroup/unified`
/// on hybrid ones), where `sock_ops` goes when no `--cgroup` was given.
pub fn cgroup_v2_root() -> Option<PathBuf> {
    ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| cgroup_v2_root_of(p))
}

/// Stack capture (`--stacks`, `--stack-bytes`).
#[derive(Clone, Copy, Debug)]
pub struct StackCapture {
    pub enabled: bool,
    /// Bytes of user stack copied per stack.
    pub stack_bytes: usize,
    /// Stacks per second per process on average, and in a burst.
    pub per_second: u32,
    pub burst: u32,
}

/// The loaded, attached kernel programs.
pub struct Probes {
    /// Keeps programs and links alive; uprobes are attached to new files as they are found.
    ebpf: Ebpf,
    counters: PerCpuArray<MapData, u64>,
    /// The attach table.
    pub attached: Vec<AttachResult>,
    /// Trace context carried between hosts (`--propagate`): on, off, or why not.
    pub propagation: Propagation,
    /// `traceparent` added to plaintext HTTP/1 requests (`--propagate`): on, off, or why not.
    pub injection: Injection,
    /// The `sk_msg` program's socket map, held open while its program is attached.
    _client_socks: Option<ClientSocks>,
    /// Why the OpenSSL uprobe programs could not be loaded (then no file is probed).
    uprobe_error: Option<String>,
    /// Why the Go uprobe programs could not be loaded (then no Go client is probed).
    go_uprobe_error: Option<String>,
    /// TLS uprobe links by the key TLS discovery gave their file, to detach them when the
    /// file's last process exits.
    tls_links: HashMap<u64, Vec<(&'static str, UProbeLinkId)>>,
    /// Go goroutine-following uprobe links (kept for the whole run).
    go_links: Vec<(&'static str, UProbeLinkId)>,
    /// `--empty-programs`: every hook gets an empty program of its kind (the bench's floor).
    empty_programs: bool,
}

impl Drop for Probes {
    /// Detaches every uprobe (one after another: the kernel serialises them anyway, see
    /// [`Probes::release_in_background`]).
    fn drop(&mut self) {
        drop(self.take_uprobe_links());
    }
}

impl Probes {
    /// Lets ztrace exit at once while the kernel unregisters its uprobes in the background.
    ///
    /// Unregistering a uprobe waits for an RCU grace period under a kernel-wide mutex: about
    /// 0.1 s per uprobe on a loaded machine, strictly one after another (threads do not help),
    /// so a hundred probes kept `ztrace` from exiting for 10-30 s after Ctrl-C or SIGTERM. Here
    /// a child process keeps a copy of the BPF file descriptors (programs, links, maps) and
    /// nothing else; ztrace exits without closing them (its copies are not the last ones, so the
    /// exit is quick), and the child, which notices through a pipe, then exits and drops the
    /// last references. The breakpoints go within seconds either way; with `kill -9` the kernel
    /// does the same. Falls back to detaching here when the child cannot be made.
    pub fn release_in_background(mut self) {
        let links = self.take_uprobe_links();
        // Everything else (tracepoints, sock_ops, maps) goes now: after this, the BPF
        // descriptors left are the uprobes'.
        drop(self);
        if links.is_empty() {
            return;
        }
        let Some(keep) = bpf_fds() else {
            drop(links);
            return;
        };
        let mut pipe = [0; 2];
        // SAFETY: pipe2 writes two fds into the array it is given.
        if unsafe { libc::pipe2(pipe.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            drop(links);
            return;
        }
        let (read_end, write_end) = (pipe[0], pipe[1]);
        // Every other descriptor is closed in the child: stdout and stderr (a reader of ztrace's
        // output sees their end when ztrace exits), listening sockets (a new ztrace may bind
        // the same ports at once), files.
        let close: Vec<i32> = open_fds()
            .into_iter()
            .filter(|fd| !keep.contains(fd) && *fd != read_end)
            .collect();
        // SAFETY: the child only calls async-signal-safe functions (close, read, _exit) on
        // memory prepared before the fork, as a multi-threaded parent requires.
        match unsafe { libc::fork() } {
            0 => unsafe {
                for fd in &close {
                    libc::close(*fd);
                }
                let mut byte = 0u8;
                // Returns 0 (end of file) once ztrace, the only holder of the write end, exited.
                while libc::read(read_end, (&raw mut byte).cast(), 1) > 0 {}
                libc::_exit(0);
            },
            pid if pid > 0 => {
                // SAFETY: our copy of the read end is not used any more.
                unsafe { libc::close(read_end) };
                tracing::debug!(
                    pid,
                    uprobes = links.len(),
                    "uprobes are detached by a child process after ztrace exits"
                );
                // The write end stays open until ztrace exits; the links are not closed here.
                std::mem::forget(links);
            }
            _ => {
                // SAFETY: both ends are ours and unused.
                unsafe {
                    libc::close(read_end);
                    libc::close(write_end);
                }
                drop(links);
            }
        }
    }

    /// Takes every uprobe link (TLS libraries, Go programs) out of the programs that hold them.
    fn take_uprobe_links(&mut self) -> Vec<aya::programs::uprobe::UProbeLink> {
        let ids = self
            .tls_links
            .drain()
            .flat_map(|(_, links)| links)
            .chain(self.go_links.drain(..))
            .collect::<Vec<_>>();
        let mut links = Vec::with_capacity(ids.len());
        for (program, id) in ids {
            if let Ok(prog) = uprobe_mut(&mut self.ebpf, program) {
                if let Ok(link) = prog.take_link(id) {
                    links.push(link);
                }
            }
        }
        links
    }
}

/// The descriptors of this process that are BPF objects (programs, maps, links, perf events),
/// read from `/proc/self/fd`; `None` when it cannot be read.
fn bpf_fds() -> Option<Vec<i32>> {
    let mut fds = Vec::new();
    for entry in std::fs::read_dir("/proc/self/fd").ok()?.flatten() {
        let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let target = std::fs::read_link(entry.path()).unwrap_or_default();
        let target = target.to_string_lossy();
        if target.starts_with("anon_inode:bpf") || target.starts_with("anon_inode:[perf_event]") {
            fds.push(fd);
        }
    }
    Some(fds)
}

/// Every open descriptor of this process.
fn open_fds() -> Vec<i32> {
    std::fs::read_dir("/proc/self/fd")
        .map(|dir| {
            dir.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The event ring buffer, registered with the tokio reactor.
pub struct EventRing(tokio::io::unix::AsyncFd<RingBuf<MapData>>);

impl EventRing {
    /// Registers the ring buffer's fd with the current tokio runtime.
    pub fn new(ring: RingBuf<MapData>) -> std::io::Result<Self> {
        // SAFETY: the RingBuf owns its fd and moves into the AsyncFd, which deregisters the fd
        // before dropping the RingBuf; nothing else closes it.
        unsafe { tokio::io::unix::AsyncFd::register(ring) }
            .map(EventRing)
            .map_err(|e| e.into_parts().1)
    }

    /// Waits until the kernel has written records.
    pub async fn readable(
        &mut self,
    ) -> std::io::Result<tokio::io::unix::AsyncFdReadyMutGuard<'_, RingBuf<MapData>>> {
        self.0.readable_mut().await
    }

    /// The ring buffer, to drain it without waiting.
    pub fn ring_mut(&mut self) -> &mut RingBuf<MapData> {
        self.0.get_mut()
    }
}

/// Loads and attaches every program of the attach table.
///
/// Returns the probes and the event ring buffer (read by the pipeline), `ring_bytes` large.
pub fn start(
    capture_bytes: usize,
    ring_bytes: u32,
    selection: &Selection,
    stacks: StackCapture,
    empty_programs: bool,
    propagate: u32,
) -> Result<(Probes, RingBuf<MapData>), BpfError> {
    check_can_start()?;
    // Older verifiers reject the programs only after minutes of work (and list every helper they
    // lack): say it at once.
    if let Some((release, version)) = verifier::kernel_release() {
        if version < MIN_KERNEL {
            return Err(BpfError::KernelTooOld { release });
        }
    }
    raise_memlock();
    ensure_tracefs();
    let offsets = btf::Btf::from_sys_fs()?.kernel_offsets()?;
    let settings = Settings {
        agent_tgid: std::process::id(),
        capture_bytes: capture_bytes.min(MAX_CAPTURE) as u32,
        filter_enabled: u32::from(!selection.pids.is_empty() || !selection.exe_names.is_empty()),
        propagate,
        cgroup_id: selection.cgroup_id()?,
    };
    let stack_settings = StackSettings {
        enabled: u32::from(stacks.enabled),
        stack_bytes: stacks.stack_bytes.min(MAX_STACK_BYTES) as u32,
        per_second: stacks.per_second,
        burst: stacks.burst,
    };
    let load = |object: &[u8]| {
        EbpfLoader::new()
            // No kernel BTF for aya: the programs have no CO-RE relocations (struct offsets come
            // from `btf::Btf` through `OFFSETS`; see the test), and aya's own parse of the
            // kernel's BTF cost ~12 MiB of peak memory that the allocator kept afterwards.
            .btf(None)
            .map_max_entries(maps::EVENTS, ring_bytes)
            // `CALLS` is a task-local storage map, which aya creates but has no typed handle for.
            .allow_unsupported_maps()
            .override_global(globals::OFFSETS, &offsets, true)
            .override_global(globals::SETTINGS, &settings, true)
            .override_global(globals::STACK_SETTINGS, &stack_settings, true)
            .load(object)
    };
    let refused = |e: &aya::EbpfError| error_chain(e).contains("Operation not permitted");
    // `Some(reason)` when the socket map of `sk_msg` is a stand-in (see `standin`).
    let mut socket_map_refused = None;
    let mut ebpf = match load(OBJECT) {
        Ok(ebpf) => ebpf,
        // The kernel creates socket maps only with CAP_NET_ADMIN (or, on recent kernels,
        // CAP_SYS_ADMIN): try again without one before blaming anything else.
        Err(e) if refused(&e) => {
            let retried = standin::with_plain_map(OBJECT, maps::CLIENT_SOCKS)
                .map_err(|reason| {
                    tracing::warn!(%reason, "no stand-in for the socket map");
                    e
                })
                .and_then(|object| load(object.bytes()));
            match retried {
                Ok(ebpf) => {
                    socket_map_refused = Some(caps::SOCKET_MAP_REFUSED);
                    ebpf
                }
                Err(e) => {
                    return Err(match caps::Caps::current() {
                        // CAP_BPF is there (checked at start), yet bpf() says EPERM: a
                        // seccomp filter.
                        Some(c) if !c.has(caps::CAP_SYS_ADMIN) && refused(&e) => {
                            BpfError::MissingCapability(caps::SECCOMP_REFUSED)
                        }
                        _ => BpfError::Load(e),
                    });
                }
            }
        }
        Err(e) => return Err(BpfError::Load(e)),
    };

    fill_selection(&mut ebpf, selection)?;
    if !empty_programs {
        if let Err(reason) = load_iovecs_more(&mut ebpf) {
            tracing::warn!(
                %reason,
                "vectored calls (writev, sendmsg) keep only their first 8 segments: HTTP/2 frames of gRPC C-core and Node.js beyond them are lost"
            );
        }
    }

    // Vectored reads draw server request ids in a program of their own, which hands the call on
    // to `zt_saved_exit`; without it they are emitted without ids (the agent links them as
    // before).
    let read_ids = !empty_programs
        && propagate != ztrace_common::propagate::OFF
        && {
            match load_tail_target(&mut ebpf, SAVED_EXIT_PROGRAM, maps::SAVED_EXIT) {
                Ok(()) => {
                    // A request's own `traceparent` (plaintext HTTP/1), read before the call is
                    // emitted: without it the read exits emit at once.
                    if let Err(reason) =
                        load_tail_target(&mut ebpf, TRACEPARENT_PROGRAM, maps::TRACEPARENT_READ)
                    {
                        tracing::warn!(
                            %reason,
                            "the kernel does not read requests' traceparent headers: a server's calls for a request that came with one carry a new trace id to other hosts"
                        );
                    }
                    true
                }
                Err(reason) => {
                    tracing::warn!(
                        %reason,
                        "servers that read with readv/recvmsg get no request ids from the kernel: their requests from other hosts start new traces"
                    );
                    false
                }
            }
        };

    let mut attached = Vec::with_capacity(HOOKS.len());
    for hook in HOOKS {
        let program = if empty_programs {
            EMPTY_TRACEPOINT
        } else if read_ids {
            READ_IDS_PROGRAMS
                .iter()
                .find(|(plain, _)| *plain == hook.program)
                .map_or(hook.program, |(_, ids)| *ids)
        } else {
            hook.program
        };
        let error = attach_tracepoint(&mut ebpf, program, hook.category, hook.name)?;
        attached.push(AttachResult { hook: *hook, error });
    }
    let propagation = if propagate != ztrace_common::propagate::OFF {
        // Without the socket map, the `sock_ops` program that does not fill it.
        let program = match socket_map_refused {
            None => SOCK_OPS,
            Some(_) => SOCK_OPS_OPTION,
        };
        attach_sock_ops(
            &mut ebpf,
            program,
            selection.cgroup.clone().or_else(cgroup_v2_root),
        )?
    } else {
        Propagation::Off
    };
    let (injection, client_socks) = match (&propagation, socket_map_refused) {
        (Propagation::Off, _) => (Injection::Off("--propagate=off"), None),
        (_, Some(reason)) => (Injection::Failed(reason.to_owned()), None),
        (Propagation::Failed { .. }, None) => (Injection::Off("sock_ops is not attached"), None),
        (Propagation::On { .. }, None) if empty_programs => {
            (Injection::Off("--empty-programs"), None)
        }
        (Propagation::On { .. }, None) => {
            attach_inject(&mut ebpf, propagate == ztrace_common::propagate::ALL)?
        }
    };
    let uprobe_error = load_uprobes(&mut ebpf)?;
    // The same for TLS plaintext (OpenSSL, Go's crypto/tls).
    if read_ids && uprobe_error.is_none() {
        // The emitting program first: the scan hands every read on to it.
        let loaded =
            load_tail_target_at(&mut ebpf, TLS_READ_EMIT_PROGRAM, maps::TLS_TRACEPARENT, 1)
                .and_then(|()| {
                    load_tail_target(&mut ebpf, TLS_TRACEPARENT_PROGRAM, maps::TLS_TRACEPARENT)
                });
        if let Err(reason) = loaded {
            tracing::warn!(
                %reason,
                "the kernel does not read HTTPS requests' traceparent headers: a server's calls for a request that came with one carry a new trace id to other hosts"
            );
        }
    }
    let mut go_uprobe_error = None;
    for program in [
        "go_helper",
        "go_owner",
        "go_owner_stack",
        "go_newproc",
        "go_newproc_ret",
        "go_grpc_stream",
        "go_grpc_stream_ret",
    ] {
        if let Err(e) = uprobe_mut(&mut ebpf, program)?.load() {
            go_uprobe_error = Some(format!(
                "loading {program}: {}",
                verifier::load_failure(program, &e)
            ));
            break;
        }
    }
    let ring = RingBuf::try_from(
        ebpf.take_map(maps::EVENTS)
            .ok_or(BpfError::MissingMap(maps::EVENTS))?,
    )
    .map_err(|source| BpfError::Map {
        name: maps::EVENTS,
        source,
    })?;
    let counters = PerCpuArray::try_from(
        ebpf.take_map(maps::COUNTERS)
            .ok_or(BpfError::MissingMap(maps::COUNTERS))?,
    )
    .map_err(|source| BpfError::Map {
        name: maps::COUNTERS,
        source,
    })?;
    Ok((
        Probes {
            ebpf,
            counters,
            attached,
            propagation,
            injection,
            _client_socks: client_socks,
            uprobe_error,
            go_uprobe_error,
            tls_links: HashMap::new(),
            go_links: Vec::new(),
            empty_programs,
        },
        ring,
    ))
}

/// Loads the OpenSSL uprobe programs (attached per file later). `Ok(Some(reason))` when the
/// kernel refused them.
fn load_uprobes(ebpf: &mut Ebpf) -> Result<Option<String>, BpfError> {
    let programs = OPENSSL_PROBES
        .iter()
        .chain(GO_PROBES)
        .map(|(p, _)| *p)
        .chain([OPENSSL_RETURN, GO_RETURN, EMPTY_UPROBE, EMPTY_URETPROBE]);
    for program in programs {
        let prog = uprobe_mut(ebpf, program)?;
        if let Err(e) = prog.load() {
            return Ok(Some(format!(
                "loading {program}: {}",
                verifier::load_failure(program, &e)
            )));
        }
    }
    Ok(None)
}

fn uprobe_mut<'a>(ebpf: &'a mut Ebpf, program: &'static str) -> Result<&'a mut UProbe, BpfError> {
    ebpf.program_mut(program)
        .ok_or(BpfError::MissingProgram { program })?
        .try_into()
        .map_err(|_| BpfError::MissingProgram { program })
}

impl crate::tls::Attacher for Probes {
    fn attach_openssl(
        &mut self,
        key: u64,
        path: &std::path::Path,
        functions: &[&'static str],
    ) -> Result<usize, String> {
        if let Some(e) = &self.uprobe_error {
            return Err(e.clone());
        }
        let mut sites = Vec::new();
        for function in functions {
            let Some((program, _)) = OPENSSL_PROBES.iter().find(|(_, f)| f == function) else {
                continue;
            };
            // The return probe first: an entry without its return would leave a call pending.
            let with_return = !OPENSSL_ENTRY_ONLY.contains(function);
            for program in [OPENSSL_RETURN, program]
                .into_iter()
                .skip(usize::from(!with_return))
            {
                sites.push((
                    program,
                    UProbeAttachPoint::from(*function),
                    function.to_string(),
                ));
            }
        }
        self.attach_sites(key, path, sites)
    }

    fn attach_go(
        &mut self,
        key: u64,
        path: &std::path::Path,
        functions: &[crate::tls::go::GoFunction],
        cookie: u64,
    ) -> Result<usize, String> {
        if let Some(e) = &self.uprobe_error {
            return Err(e.clone());
        }
        let mut sites = Vec::new();
        for function in functions {
            let Some((program, _)) = GO_PROBES.iter().find(|(_, f)| *f == function.name) else {
                continue;
            };
            // Returns first: an entry whose return is never seen would leave a call pending.
            // Write is sent at its entry: its returns need no probe.
            let rets: &[u64] = if *program == "zt_go_tls_write" {
                &[]
            } else {
                &function.rets
            };
            for (program, offset) in rets
                .iter()
                .map(|r| (GO_RETURN, *r))
                .chain([(*program, function.entry)])
            {
                // The entry programs read the struct offsets from their cookie.
                let point = UProbeAttachPoint {
                    location: offset.into(),
                    cookie: (program != GO_RETURN).then_some(cookie),
                };
                sites.push((program, point, format!("{} at {offset:#x}", function.name)));
            }
        }
        self.attach_sites(key, path, sites)
    }

    fn detach(&mut self, key: u64) -> usize {
        let ids = self.tls_links.remove(&key).unwrap_or_default();
        let mut links = Vec::with_capacity(ids.len());
        for (program, id) in ids {
            if let Ok(prog) = uprobe_mut(&mut self.ebpf, program) {
                match prog.take_link(id) {
                    Ok(link) => links.push(link),
                    Err(e) => {
                        tracing::debug!(program, error = %error_chain(&e), "could not take a uprobe link")
                    }
                }
            }
        }
        let detached = links.len();
        // Dropping a link unregisters its uprobe, and the kernel waits for an RCU grace period
        // each time (up to half a second on a loaded machine): never on the capture thread.
        if !links.is_empty() {
            let spawned = std::thread::Builder::new()
                .name("ztrace-detach".into())
                .spawn(move || drop(links));
            if let Err(e) = spawned {
                tracing::warn!(error = %e, "could not start a thread to detach uprobes: they were detached on the capture thread");
            }
        }
        detached
    }
}

/// The empty programs of `--empty-programs` (`ebpf/src/floor.rs`).
const EMPTY_TRACEPOINT: &str = "zt_empty_tracepoint";
const EMPTY_UPROBE: &str = "zt_empty_uprobe";
const EMPTY_URETPROBE: &str = "zt_empty_uretprobe";

impl Probes {
    /// The program to attach where `program` goes: itself, or with `--empty-programs` the empty
    /// program of its kind.
    fn stand_in(&mut self, program: &'static str) -> &'static str {
        if !self.empty_programs {
            return program;
        }
        match uprobe_mut(&mut self.ebpf, program).map(|p| p.kind()) {
            Ok(aya::programs::ProbeKind::Return) => EMPTY_URETPROBE,
            _ => EMPTY_UPROBE,
        }
    }

    /// Attaches `sites` (program, location, what to call it in an error) in `path` and keeps
    /// their links under `key`; on a failure, detaches those already in and says which failed.
    fn attach_sites(
        &mut self,
        key: u64,
        path: &std::path::Path,
        sites: Vec<(&'static str, UProbeAttachPoint<'static>, String)>,
    ) -> Result<usize, String> {
        let mut probes = 0;
        for (program, point, what) in sites {
            let program = self.stand_in(program);
            let attached = uprobe_mut(&mut self.ebpf, program)
                .map_err(|e| e.to_string())
                .and_then(|prog| {
                    prog.attach(point, path, UProbeScope::AllProcesses)
                        .map_err(|e| format!("{what} ({program}): {}", error_chain(&e)))
                });
            match attached {
                Ok(link) => {
                    self.tls_links.entry(key).or_default().push((program, link));
                    probes += 1;
                }
                Err(e) => {
                    crate::tls::Attacher::detach(self, key);
                    return Err(e);
                }
            }
        }
        Ok(probes)
    }
}

impl crate::discovery::go::GoAttacher for Probes {
    fn attach_go_handoffs(
        &mut self,
        path: &std::path::Path,
        functions: &[crate::discovery::go::Handoff],
    ) -> Result<(), String> {
        if let Some(e) = &self.go_uprobe_error {
            return Err(e.clone());
        }
        for h in functions {
            let program = self.stand_in(h.program);
            let prog = uprobe_mut(&mut self.ebpf, program).map_err(|e| e.to_string())?;
            let attached = match h.offset {
                Some(offset) => prog.attach(offset, path, UProbeScope::AllProcesses),
                None => prog.attach(h.function, path, UProbeScope::AllProcesses),
            };
            let link = attached
                .map_err(|e| format!("{} ({}): {}", h.function, h.program, error_chain(&e)))?;
            self.go_links.push((program, link));
        }
        Ok(())
    }

    fn attach_go_spawn(
        &mut self,
        path: &std::path::Path,
        sites: &crate::discovery::go::Sites,
    ) -> Result<(), String> {
        if let Some(e) = &self.go_uprobe_error {
            return Err(e.clone());
        }
        // Returns first: an entry whose return is never seen would leave a call pending.
        let all = sites
            .rets
            .iter()
            .map(|r| ("go_newproc_ret", *r))
            .chain([("go_newproc", sites.entry)]);
        for (program, offset) in all {
            let program = self.stand_in(program);
            let prog = uprobe_mut(&mut self.ebpf, program).map_err(|e| e.to_string())?;
            let link = prog
                .attach(offset, path, UProbeScope::AllProcesses)
                .map_err(|e| {
                    format!(
                        "{} at {offset:#x} ({program}): {}",
                        crate::discovery::go::NEWPROC,
                        error_chain(&e)
                    )
                })?;
            self.go_links.push((program, link));
        }
        Ok(())
    }

    fn attach_go_grpc(
        &mut self,
        path: &std::path::Path,
        client: &crate::golang::grpc::GrpcClient,
    ) -> Result<(), String> {
        if let Some(e) = &self.go_uprobe_error {
            return Err(e.clone());
        }
        // Returns first: an entry whose return is never seen would leave a call pending. Each
        // RET reads the offsets from its cookie.
        let all = client
            .sites
            .rets
            .iter()
            .map(|r| ("go_grpc_stream_ret", *r))
            .chain([("go_grpc_stream", client.sites.entry)]);
        for (program, offset) in all {
            let program = self.stand_in(program);
            let prog = uprobe_mut(&mut self.ebpf, program).map_err(|e| e.to_string())?;
            let point = UProbeAttachPoint {
                location: offset.into(),
                cookie: Some(client.cookie),
            };
            let link = prog
                .attach(point, path, UProbeScope::AllProcesses)
                .map_err(|e| {
                    format!(
                        "{} at {offset:#x} ({program}): {}",
                        crate::golang::grpc::NEW_STREAM,
                        error_chain(&e)
                    )
                })?;
            self.go_links.push((program, link));
        }
        Ok(())
    }

    fn follow_go_process(&mut self, tgid: u32, goid_offset: Option<u32>) -> Result<(), String> {
        let map = self
            .ebpf
            .map_mut(maps::GO_PROCS)
            .ok_or_else(|| format!("map {} missing", maps::GO_PROCS))?;
        let mut procs: BpfHashMap<_, u32, ztrace_common::GoProc> =
            BpfHashMap::try_from(map).map_err(|e| e.to_string())?;
        match goid_offset {
            Some(goid_offset) => procs.insert(
                tgid,
                ztrace_common::GoProc {
                    goid_offset,
                    _pad: 0,
                },
                0,
            ),
            None => procs.remove(&tgid),
        }
        .map_err(|e| e.to_string())
    }
}

impl Probes {
    /// The kernel takes no stacks of `tgid`'s connections (until it runs a new program).
    pub fn skip_stacks(&mut self, tgid: u32) {
        let Some(map) = self.ebpf.map_mut(maps::STACK_SKIP) else {
            return;
        };
        match BpfHashMap::<_, u32, u32>::try_from(map) {
            Ok(mut skip) => {
                if let Err(e) = skip.insert(tgid, 1, 0) {
                    tracing::debug!(tgid, error = %e, "could not turn stacks off for a process");
                }
            }
            Err(e) => tracing::debug!(error = %e, "STACK_SKIP is not a hash map"),
        }
    }

    /// True when every required hook attached.
    pub fn required_ok(&self) -> bool {
        self.attached
            .iter()
            .all(|r| r.error.is_none() || !r.hook.required)
    }

    /// `Ok` when every required hook attached; else why ztrace cannot run, in one sentence
    /// that names the kernel when it is older than [`MIN_KERNEL`].
    pub fn check_required(&self) -> Result<(), BpfError> {
        if self.required_ok() {
            return Ok(());
        }
        match verifier::kernel_release() {
            Some((release, version)) if version < MIN_KERNEL => {
                Err(BpfError::KernelTooOld { release })
            }
            _ => Err(BpfError::RequiredHooks),
        }
    }

    /// How full each of the kernel's hash maps is (walks every key: call it every few
    /// seconds, not per event).
    pub fn map_fill(&self) -> Vec<fill::MapFill> {
        fill::hash_maps(self.ebpf.maps())
    }

    /// Removes exited processes' entries from the maps keyed by process (see
    /// [`fill::sweep_exited`]); returns how many. Walks the maps: every few seconds at most.
    pub fn sweep_exited(&self) -> u64 {
        fill::sweep_exited(self.ebpf.maps())
    }

    /// Kernel counters summed over CPUs, by name.
    pub fn kernel_counters(&self) -> Vec<(&'static str, u64)> {
        Counter::ALL
            .iter()
            .map(|c| {
                let total = self
                    .counters
                    .get(&(*c as u32), 0)
                    .map(|per_cpu| per_cpu.iter().sum())
                    .unwrap_or(0);
                (c.name(), total)
            })
            .collect()
    }
}

/// The checks that need nothing loaded: root or the capabilities, and an eBPF object in this binary. The pipeline
/// runs them first, so that the user hears the real problem before anything else.
///
/// Capabilities come from the effective set: root in a container has only what the container
/// was given. A missing optional one is one warning, said once.
pub fn check_can_start() -> Result<(), BpfError> {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if let Some(caps) = caps::Caps::current() {
        match caps::missing_required(caps) {
            Some(_) if !root => return Err(BpfError::NotRoot),
            Some(sentence) => return Err(BpfError::MissingCapability(sentence)),
            None => {
                static WARNED: std::sync::Once = std::sync::Once::new();
                WARNED.call_once(|| {
                    caps::missing_optional(caps)
                        .into_iter()
                        .for_each(|w| tracing::warn!("{w}"))
                });
            }
        }
    } else if !root {
        return Err(BpfError::NotRoot);
    }
    if OBJECT.is_empty() {
        return Err(BpfError::NoObject);
    }
    Ok(())
}

/// Loads the `sock_ops` program that writes and reads the trace-context TCP option and attaches
/// it to `cgroup` (the traced cgroup, else the cgroup v2 root). Its failure is not fatal: the
/// kernel still gives requests their ids, and traces split at host boundaries.
fn attach_sock_ops(
    ebpf: &mut Ebpf,
    program: &'static str,
    cgroup: Option<PathBuf>,
) -> Result<Propagation, BpfError> {
    let Some(cgroup) = cgroup else {
        return Ok(Propagation::Failed {
            cgroup: None,
            reason: "no cgroup v2 hierarchy is mounted".into(),
        });
    };
    let prog: &mut SockOps = ebpf
        .program_mut(program)
        .ok_or(BpfError::MissingProgram { program })?
        .try_into()
        .map_err(|_| BpfError::MissingProgram { program })?;
    let failed = |reason: String| {
        Ok(Propagation::Failed {
            cgroup: Some(cgroup.clone()),
            reason,
        })
    };
    if let Err(e) = prog.load() {
        let reason = verifier::load_failure(program, &e);
        return failed(format!("load: {}", caps::net_admin_hint(&reason)));
    }
    let dir = match std::fs::File::open(&cgroup) {
        Ok(dir) => dir,
        Err(e) => return failed(format!("open: {e}")),
    };
    match prog.attach(&dir, CgroupAttachMode::Single) {
        Ok(_) => Ok(Propagation::On { cgroup }),
        Err(e) => failed(format!("attach: {}", error_chain(&e))),
    }
}

/// Loads the `sk_msg` program that adds `traceparent` to plaintext HTTP/1 requests, attaches it
/// to the client-socket map, then tells `sock_ops` to fill that map. Its failure is not fatal:
/// the TCP option still carries the context to hosts that run ztrace.
fn attach_inject(
    ebpf: &mut Ebpf,
    loopback: bool,
) -> Result<(Injection, Option<ClientSocks>), BpfError> {
    let socks: ClientSocks = SockHash::try_from(
        ebpf.take_map(maps::CLIENT_SOCKS)
            .ok_or(BpfError::MissingMap(maps::CLIENT_SOCKS))?,
    )
    .map_err(|source| BpfError::Map {
        name: maps::CLIENT_SOCKS,
        source,
    })?;
    let write: &mut SkMsg = ebpf
        .program_mut(INJECT_WRITE)
        .ok_or(BpfError::MissingProgram {
            program: INJECT_WRITE,
        })?
        .try_into()
        .map_err(|_| BpfError::MissingProgram {
            program: INJECT_WRITE,
        })?;
    if let Err(e) = write.load() {
        let reason = verifier::load_failure(INJECT_WRITE, &e);
        return Ok((
            Injection::Failed(format!("load: {}", caps::net_admin_hint(&reason))),
            None,
        ));
    }
    let write_fd = match write.fd().map(|fd| fd.try_clone()) {
        Ok(Ok(fd)) => fd,
        Ok(Err(e)) => return Ok((Injection::Failed(format!("tail call: {e}")), None)),
        Err(e) => return Ok((Injection::Failed(format!("tail call: {e}")), None)),
    };
    let mut jump = ProgramArray::try_from(
        ebpf.map_mut(maps::INJECT_JUMP)
            .ok_or(BpfError::MissingMap(maps::INJECT_JUMP))?,
    )
    .map_err(|source| BpfError::Map {
        name: maps::INJECT_JUMP,
        source,
    })?;
    if let Err(e) = jump.set(0, &write_fd, 0) {
        return Ok((
            Injection::Failed(format!("tail call: {}", error_chain(&e))),
            None,
        ));
    }
    let prog: &mut SkMsg = ebpf
        .program_mut(INJECT)
        .ok_or(BpfError::MissingProgram { program: INJECT })?
        .try_into()
        .map_err(|_| BpfError::MissingProgram { program: INJECT })?;
    if let Err(e) = prog.load() {
        let reason = verifier::load_failure(INJECT, &e);
        return Ok((
            Injection::Failed(format!("load: {}", caps::net_admin_hint(&reason))),
            None,
        ));
    }
    if let Err(e) = prog.attach(socks.fd()) {
        return Ok((
            Injection::Failed(format!("attach: {}", error_chain(&e))),
            None,
        ));
    }
    let mut on: Array<_, u32> = Array::try_from(
        ebpf.map_mut(maps::INJECT_ON)
            .ok_or(BpfError::MissingMap(maps::INJECT_ON))?,
    )
    .map_err(|source| BpfError::Map {
        name: maps::INJECT_ON,
        source,
    })?;
    if let Err(e) = on.set(0, 1, 0) {
        return Ok((
            Injection::Failed(format!("enable: {}", error_chain(&e))),
            None,
        ));
    }
    Ok((Injection::On { loopback }, Some(socks)))
}

/// Size of `CLIENT_SOCKS`'s key (`sock::FlowKey` in `ebpf/`: family, two ports, two
/// 16-byte addresses).
const CLIENT_SOCKS_KEY: usize = 40;

/// The client-socket map of the `sk_msg` program, kept open while the agent runs.
type ClientSocks = SockHash<MapData, [u8; CLIENT_SOCKS_KEY]>;

/// Loads the program that copies a vectored call's segments beyond the first 8 (a tail call,
/// never attached) into its program array. `Err(reason)` when the kernel refused it.
fn load_iovecs_more(ebpf: &mut Ebpf) -> Result<(), String> {
    load_tail_target(ebpf, IOVECS_MORE_PROGRAM, maps::IOVECS_MORE)
}

/// Loads `program` (a tracepoint or uprobe program reached only by tail calls) and puts it at index 0 of
/// the program array `array`. `Err(reason)` when the kernel refused it.
fn load_tail_target(ebpf: &mut Ebpf, program: &'static str, array: &str) -> Result<(), String> {
    load_tail_target_at(ebpf, program, array, 0)
}

/// The same at `index` of the program array.
fn load_tail_target_at(
    ebpf: &mut Ebpf,
    program: &'static str,
    array: &str,
    index: u32,
) -> Result<(), String> {
    let refused = |e: &ProgramError| format!("load: {}", verifier::load_failure(program, e));
    let fd = match ebpf
        .program_mut(program)
        .ok_or("no such program in the object")?
    {
        Program::TracePoint(prog) => {
            prog.load().map_err(|e| refused(&e))?;
            prog.fd().map_err(|e| error_chain(&e))?.try_clone()
        }
        Program::UProbe(prog) => {
            prog.load().map_err(|e| refused(&e))?;
            prog.fd().map_err(|e| error_chain(&e))?.try_clone()
        }
        _ => return Err("neither a tracepoint nor a uprobe program".to_owned()),
    }
    .map_err(|e| e.to_string())?;
    let map = ebpf
        .map_mut(array)
        .ok_or("no program array in the object")?;
    let mut programs = ProgramArray::try_from(map).map_err(|e| error_chain(&e))?;
    programs.set(index, &fd, 0).map_err(|e| error_chain(&e))
}

/// `Ok(None)` when attached, `Ok(Some(reason))` when the kernel refused.
fn attach_tracepoint(
    ebpf: &mut Ebpf,
    program: &'static str,
    category: &str,
    name: &str,
) -> Result<Option<String>, BpfError> {
    let prog: &mut TracePoint = ebpf
        .program_mut(program)
        .ok_or(BpfError::MissingProgram { program })?
        .try_into()
        .map_err(|_| BpfError::MissingProgram { program })?;
    // An empty program (`--empty-programs`) goes on many hooks: loaded once.
    if prog.fd().is_ok() {
    } else if let Err(e) = prog.load() {
        return Ok(Some(format!(
            "load: {}",
            verifier::load_failure(program, &e)
        )));
    }
    match prog.attach(category, name) {
        Ok(_) => Ok(None),
        Err(e) => Ok(Some(format!("attach: {}", error_chain(&e)))),
    }
}

pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

fn fill_selection(ebpf: &mut Ebpf, selection: &Selection) -> Result<(), BpfError> {
    let map = ebpf
        .map_mut(maps::PID_ALLOW)
        .ok_or(BpfError::MissingMap(maps::PID_ALLOW))?;
    let mut pids: BpfHashMap<_, u32, u32> =
        BpfHashMap::try_from(map).map_err(|source| BpfError::Map {
            name: maps::PID_ALLOW,
            source,
        })?;
    for pid in &selection.pids {
        pids.insert(pid, 1, 0).map_err(|source| BpfError::Map {
            name: maps::PID_ALLOW,
            source,
        })?;
    }
    let map = ebpf
        .map_mut(maps::COMM_ALLOW)
        .ok_or(BpfError::MissingMap(maps::COMM_ALLOW))?;
    let mut comms: BpfHashMap<_, [u8; 16], u32> =
        BpfHashMap::try_from(map).map_err(|source| BpfError::Map {
            name: maps::COMM_ALLOW,
            source,
        })?;
    for name in &selection.exe_names {
        comms
            .insert(comm_key(name), 1, 0)
            .map_err(|source| BpfError::Map {
                name: maps::COMM_ALLOW,
                source,
            })?;
    }
    Ok(())
}

/// The kernel's `comm` of an executable name: its first 15 bytes, NUL-padded.
pub fn comm_key(name: &str) -> [u8; 16] {
    let mut key = [0u8; 16];
    let bytes = name.as_bytes();
    let n = bytes.len().min(15);
    key[..n].copy_from_slice(&bytes[..n]);
    key
}

/// Mounts tracefs at /sys/kernel/tracing when neither it nor debugfs's copy is there (minimal
/// hosts and containers often lack it; tracepoints cannot be attached without it). A failure is
/// left to the attach table to report.
fn ensure_tracefs() {
    const TRACEFS: &str = "/sys/kernel/tracing";
    let present = |p: &str| std::path::Path::new(p).join("events").is_dir();
    if present(TRACEFS) || present("/sys/kernel/debug/tracing") {
        return;
    }
    let source = c"tracefs";
    let target = c"/sys/kernel/tracing";
    // SAFETY: all pointers are valid NUL-terminated strings; data may be null.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            source.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc == 0 {
        tracing::info!("mounted tracefs at {TRACEFS}");
    } else {
        tracing::warn!(error = %std::io::Error::last_os_error(), "could not mount tracefs at {TRACEFS}");
    }
}

/// Raises RLIMIT_MEMLOCK for kernels that still charge BPF maps to it (< 5.11). Failure is
/// only a warning: newer kernels charge the memory cgroup instead.
fn raise_memlock() {
    let rlim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit reads the struct we pass; no other preconditions.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) } != 0 {
        tracing::debug!("could not raise RLIMIT_MEMLOCK; fine on Linux >= 5.11");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The loader gives aya no kernel BTF, which is right only while the programs have no CO-RE
    /// relocations: the `.BTF.ext` header's `core_relo_len` (bytes 28..32) must stay 0.
    #[test]
    fn the_programs_need_no_kernel_btf_relocations() {
        use object::{Object, ObjectSection};
        let file = object::File::parse(OBJECT).expect("the eBPF object parses");
        let ext = file
            .section_by_name(".BTF.ext")
            .expect(".BTF.ext")
            .data()
            .expect("its bytes");
        let hdr_len = u32::from_le_bytes(ext[4..8].try_into().expect("4 bytes"));
        if hdr_len >= 32 {
            let core_relo_len = u32::from_le_bytes(ext[28..32].try_into().expect("4 bytes"));
            assert_eq!(
                core_relo_len, 0,
                "the eBPF programs now have CO-RE relocations: give aya the kernel's BTF (EbpfLoader::btf)"
            );
        }
    }

    #[test]
    fn the_start_up_log_says_what_is_traced() {
        let scope = |pids: &[u32], names: &[&str]| {
            Selection {
                pids: pids.to_vec(),
                exe_names: names.iter().map(|n| (*n).to_owned()).collect(),
                cgroup: None,
            }
            .describe()
        };
        assert_eq!(
            scope(&[], &[]),
            "tracing every process on this host except ztrace itself"
        );
        assert_eq!(scope(&[42], &[]), "tracing only process 42 (--pid)");
        assert_eq!(
            scope(&[1, 2, 3], &[]),
            "tracing only processes 1, 2 and 3 (--pid)"
        );
        assert_eq!(
            scope(&[], &["postgres"]),
            "tracing only processes named postgres (--exe)"
        );
        assert_eq!(
            scope(&[7], &["nginx", "orders-service-worker"]),
            "tracing only process 7 and processes named nginx and orders-service-worker \
             (matched as orders-service-) (--pid, --exe)"
        );
        let host = |pids: &[u32]| {
            Selection {
                pids: pids.to_vec(),
                exe_names: vec![],
                cgroup: Some("/sys/fs/cgroup/h1".into()),
            }
            .describe()
        };
        assert_eq!(
            host(&[]),
            "tracing only the processes of cgroup /sys/fs/cgroup/h1 (--cgroup)"
        );
        assert_eq!(host(&[5]), "tracing only process 5 (--pid) among the processes of cgroup /sys/fs/cgroup/h1 (--cgroup)");
    }

    #[test]
    fn comm_key_truncates_like_the_kernel() {
        assert_eq!(&comm_key("nginx")[..6], b"nginx\0");
        let long = comm_key("a-very-long-executable-name");
        assert_eq!(&long[..15], b"a-very-long-exe");
        assert_eq!(long[15], 0);
    }
}
