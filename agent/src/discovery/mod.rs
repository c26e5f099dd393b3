//! Discovery: who a traced process is — its executable, command line, container, Kubernetes
//! names, `service.name` and OpenTelemetry resource — read from `/proc`.
//!
//! Reading (`/proc/PID/{exe,comm,cmdline,environ,cgroup,ns/uts}` and the container runtime's
//! record of the container) is kept apart from deciding: [`RawProcess::read`] gathers bytes,
//! [`ProcessInfo::from_raw`] is a pure function of them, and the parsers live in
//! [`cmdline`], [`environ`], [`cgroup`] and [`k8s`]. [`ProcessCache`] remembers the result per
//! pid and never fails: a process that is already gone is described from its `comm`.
//!
//! `service.name` is chosen in this order (see [`ServiceNameSource`]): `OTEL_SERVICE_NAME`;
//! `service.name` in `OTEL_RESOURCE_ATTRIBUTES`; the pod's `resource.opentelemetry.io/service.name`
//! annotation (from the runtime's record or over CRI); the pod's `app.kubernetes.io/name` label
//! (over CRI, [`cri`]); the Kubernetes workload (exact from the controllers' labels, else
//! inferred from the pod name), else the pod name, then the container name, when the process
//! reliably runs in a pod; the script, module, jar or main class an interpreter or VM runs; the
//! executable's file name; the kernel's `comm`.
//!
//! Not done here: the Docker Compose service label, and noticing a reused pid (callers
//! [`ProcessCache::forget`] a pid when its process exits).

pub mod cgroup;
pub mod cmdline;
pub mod cri;
pub mod environ;
pub mod go;
pub mod k8s;

use std::{
    fs,
    io::{self, Read},
    path::{Path, PathBuf},
    sync::Arc,
};

use crate::{
    collections::HashMap,
    spans::{AttrValue, Resource},
};

use self::{
    cgroup::CgroupInfo,
    cri::{PodDirectory, PodRecord, PodSource},
    environ::EnvHints,
    k8s::K8sNames,
};

/// `telemetry.distro.name` of every resource.
pub const DISTRO_NAME: &str = "ztrace";

/// Default number of processes a [`ProcessCache`] remembers.
pub const DEFAULT_CAPACITY: usize = 4096;

/// Largest container-runtime record read, in bytes.
const MAX_RUNTIME_CONFIG: u64 = 1 << 20;
/// Largest `/proc/PID/environ` or `cmdline` read, in bytes.
const MAX_PROC_FILE: u64 = 1 << 20;

/// Why a process could not be read from `/proc`.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    /// `/proc/PID` does not exist: the process has exited.
    #[error("process {pid} is gone")]
    Gone { pid: u32 },
    #[error("reading {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

/// Where a process's `service.name` came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ServiceNameSource {
    /// `OTEL_SERVICE_NAME` in the process's environment.
    OtelServiceName,
    /// `service.name` in the process's `OTEL_RESOURCE_ATTRIBUTES`.
    OtelResourceAttributes,
    /// The pod's `resource.opentelemetry.io/service.name` annotation, from the runtime's record
    /// or over CRI.
    K8sAnnotation,
    /// The pod's `app.kubernetes.io/name` label, over CRI.
    K8sLabel,
    /// The workload named by the controllers' labels, else inferred from the pod name
    /// (`orders-7d9c4b8f6-x2x9q` → `orders`), else the pod name itself.
    K8sWorkload,
    /// The container name from the container runtime's record, when the pod name is unknown.
    K8sContainer,
    /// The script, module, jar or main class an interpreter or VM runs.
    Program,
    /// The file name of `/proc/PID/exe`.
    Executable,
    /// The kernel's `comm` (15 bytes at most): the process was gone or unreadable.
    Comm,
}

impl ServiceNameSource {
    /// A short stable name, for logs and debugging output.
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceNameSource::OtelServiceName => "otel_service_name",
            ServiceNameSource::OtelResourceAttributes => "otel_resource_attributes",
            ServiceNameSource::K8sAnnotation => "k8s_annotation",
            ServiceNameSource::K8sLabel => "k8s_label",
            ServiceNameSource::K8sWorkload => "k8s_workload",
            ServiceNameSource::K8sContainer => "k8s_container",
            ServiceNameSource::Program => "program",
            ServiceNameSource::Executable => "executable",
            ServiceNameSource::Comm => "comm",
        }
    }
}

/// The identity of a traced process.
#[derive(Clone, Debug, PartialEq)]
pub struct ProcessInfo {
    /// Process id (the kernel's tgid).
    pub pid: u32,
    /// File name of the executable (`/proc/PID/exe`), else `comm`.
    pub exe_name: String,
    /// Full path of the executable; empty when unknown.
    pub exe_path: String,
    /// The command line, arguments joined by spaces, with secrets replaced by `REDACTED`.
    pub command_line: String,
    pub service_name: String,
    pub service_name_source: ServiceNameSource,
    /// The 64-hex-digit container id, when the process runs in a container.
    pub container_id: Option<String>,
    /// Kubernetes names, when the process reliably runs in a pod (all `None` otherwise).
    pub k8s: K8sNames,
    /// True when `/proc/PID` could not be read (the process had exited) and this was built
    /// from the `comm` hint alone.
    pub partial: bool,
    /// The OpenTelemetry resource of every span of this process.
    pub resource: Arc<Resource>,
}

/// What discovery reads about a process, before any decision.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RawProcess {
    /// Target of `/proc/PID/exe` (` (deleted)` removed); `None` when unreadable.
    pub exe_path: Option<String>,
    /// `/proc/PID/comm`, else the caller's hint.
    pub comm: String,
    /// `/proc/PID/cmdline` bytes.
    pub cmdline: Vec<u8>,
    /// Target of `/proc/PID/cwd`, the working directory; `None` when unreadable.
    pub cwd: Option<String>,
    /// `/proc/PID/environ` bytes; `None` when unreadable (another user's process without root).
    pub environ: Option<Vec<u8>>,
    /// `/proc/PID/cgroup` text.
    pub cgroup: Option<String>,
    /// The container runtime's record of the process's container (see [`k8s::RUNTIME_CONFIG_PATHS`]).
    pub runtime_config: Option<Vec<u8>>,
    /// Whether the process has a UTS namespace (hostname) of its own, unlike pid 1's; `None`
    /// when unknown.
    pub own_uts_namespace: Option<bool>,
    /// What the container runtime said over CRI about the process's pod (see [`cri`]).
    pub pod: Option<Arc<PodRecord>>,
}

impl RawProcess {
    /// Reads what discovery needs about `pid` from `proc_root` (normally `/proc`).
    ///
    /// Only a missing `/proc/PID` is an error; each file that cannot be read (permissions, a
    /// zombie, a kernel thread) is left empty. The container runtime's record is looked up under
    /// `proc_root/1/root`, the host's root as pid 1 sees it.
    pub fn read(proc_root: &Path, pid: u32, comm_hint: &str) -> Result<RawProcess, DiscoveryError> {
        let dir = proc_root.join(pid.to_string());
        let cmdline = match read_bounded(&dir.join("cmdline"), MAX_PROC_FILE) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(DiscoveryError::Gone { pid })
            }
            Err(source) => {
                return Err(DiscoveryError::Io {
                    path: dir.join("cmdline"),
                    source,
                })
            }
        };
        let exe_path = fs::read_link(dir.join("exe")).ok().map(|p| {
            let s = p.to_string_lossy();
            s.strip_suffix(" (deleted)").unwrap_or(&s).to_owned()
        });
        let comm = fs::read_to_string(dir.join("comm"))
            .map(|c| c.trim_end_matches('\n').to_owned())
            .unwrap_or_else(|_| comm_hint.to_owned());
        let cwd = fs::read_link(dir.join("cwd"))
            .ok()
            .map(|p| p.to_string_lossy().into_owned());
        let environ = read_bounded(&dir.join("environ"), MAX_PROC_FILE).ok();
        let cgroup = fs::read_to_string(dir.join("cgroup")).ok();
        let own_uts_namespace = match (
            fs::read_link(dir.join("ns/uts")),
            fs::read_link(proc_root.join("1/ns/uts")),
        ) {
            (Ok(mine), Ok(host)) => Some(mine != host),
            _ => None,
        };
        let runtime_config = cgroup
            .as_deref()
            .and_then(|text| cgroup::parse_cgroup(text).container_id)
            .and_then(|id| read_runtime_config(&proc_root.join("1/root"), &id));
        Ok(RawProcess {
            exe_path,
            comm,
            cmdline,
            cwd,
            environ,
            cgroup,
            runtime_config,
            own_uts_namespace,
            pod: None,
        })
    }

    /// The uid of the pod the process runs in: from the runtime's record, else from a
    /// `kubepods` cgroup.
    pub fn pod_uid(&self) -> Option<String> {
        self.runtime_config
            .as_deref()
            .and_then(k8s::names_from_runtime_config)
            .and_then(|n| n.pod_uid)
            .or_else(|| {
                let cgroup = cgroup::parse_cgroup(self.cgroup.as_deref()?);
                cgroup.kubepods.then_some(cgroup.pod_uid).flatten()
            })
    }
}

/// The first container-runtime record found for container `id` under `host_root`, else under
/// the agent's own root: where pid 1's root cannot be read (a sandboxed init), the DaemonSet
/// mounts the runtimes' state directories at their host paths.
fn read_runtime_config(host_root: &Path, id: &str) -> Option<Vec<u8>> {
    [host_root, Path::new("/")].into_iter().find_map(|root| {
        k8s::RUNTIME_CONFIG_PATHS
            .iter()
            .find_map(|p| read_bounded(&root.join(p.replace("{id}", id)), MAX_RUNTIME_CONFIG).ok())
    })
}

/// Reads at most `limit` bytes of a file.
fn read_bounded(path: &Path, limit: u64) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    fs::File::open(path)?.take(limit).read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// The host name as the agent sees it (`proc_root/sys/kernel/hostname`); empty when unknown.
pub fn read_host_name(proc_root: &Path) -> String {
    fs::read_to_string(proc_root.join("sys/kernel/hostname"))
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// Basename of a path.
fn file_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// The kernel named the process (`comm`, the file name it was executed by, cut to 15 bytes)
/// otherwise than its executable file: it was run through a link to a multi-call binary.
fn invoked_through_link(exe_name: &str, comm: &str) -> bool {
    !exe_name.is_empty() && !comm.is_empty() && comm.len() < 15 && !exe_name.starts_with(comm)
}

impl ProcessInfo {
    /// Decides the identity of process `pid` from what was read about it. Pure.
    pub fn from_raw(pid: u32, raw: &RawProcess, host_name: &str) -> ProcessInfo {
        ProcessInfo::from_raw_on_node(pid, raw, host_name, None)
    }

    /// [`ProcessInfo::from_raw`] on Kubernetes node `node`: its name is `k8s.node.name` of
    /// processes in pods.
    pub fn from_raw_on_node(
        pid: u32,
        raw: &RawProcess,
        host_name: &str,
        node: Option<&str>,
    ) -> ProcessInfo {
        let args = cmdline::split_cmdline(&raw.cmdline);
        let env = raw
            .environ
            .as_deref()
            .map(environ::parse_environ)
            .unwrap_or_default();
        let cgroup = raw
            .cgroup
            .as_deref()
            .map(cgroup::parse_cgroup)
            .unwrap_or_default();
        let k8s = k8s_names(raw, &env, &cgroup);

        let exe_path = raw.exe_path.clone().unwrap_or_default();
        let (exe_name, exe_source) = match file_name(&exe_path) {
            "" => (raw.comm.clone(), ServiceNameSource::Comm),
            name => (name.to_owned(), ServiceNameSource::Executable),
        };

        let (service_name, service_name_source) = if let Some(name) = &env.otel_service_name {
            (name.clone(), ServiceNameSource::OtelServiceName)
        } else if let Some(name) = env.resource_service_name() {
            (
                name.trim().to_owned(),
                ServiceNameSource::OtelResourceAttributes,
            )
        } else if let Some(name) = k8s.resource_annotation("service.name") {
            (name.to_owned(), ServiceNameSource::K8sAnnotation)
        } else if let Some(name) = k8s
            .label("app.kubernetes.io/name")
            .map(str::trim)
            .filter(|n| !n.is_empty())
        {
            (name.to_owned(), ServiceNameSource::K8sLabel)
        } else if let Some(workload) = k8s.workload() {
            (workload.name, ServiceNameSource::K8sWorkload)
        } else if let Some(container) = &k8s.container_name {
            (container.clone(), ServiceNameSource::K8sContainer)
        } else if let Some(program) = cmdline::program_name(
            &exe_name,
            &args,
            &cmdline::NameHints {
                cwd: raw.cwd.as_deref(),
                pm2_name: env.pm2_name.as_deref(),
            },
        ) {
            (program, ServiceNameSource::Program)
        } else if invoked_through_link(&exe_name, &raw.comm) {
            // A multi-call executable run under another name (Debian's `redis-server` is a
            // link to `redis-check-rdb`, busybox): the name it was run as.
            (raw.comm.clone(), ServiceNameSource::Comm)
        } else if !exe_name.is_empty() {
            (exe_name.clone(), exe_source)
        } else {
            (format!("unknown_service:{pid}"), ServiceNameSource::Comm)
        };

        let command_line = cmdline::join_command_line(&cmdline::redact_args(&args));
        let container_id = cgroup.container_id.clone();
        let resource = build_resource(&ResourceInputs {
            pid,
            service_name: &service_name,
            exe_name: &exe_name,
            exe_path: &exe_path,
            command_line: &command_line,
            host_name,
            container_id: container_id.as_deref(),
            k8s: &k8s,
            node: node.filter(|_| !k8s.is_empty()),
            otel_resource_attributes: &env.otel_resource_attributes,
        });
        ProcessInfo {
            pid,
            exe_name,
            exe_path,
            command_line,
            service_name,
            service_name_source,
            container_id,
            k8s,
            partial: false,
            resource: Arc::new(resource),
        }
    }

    /// The identity of a process known only by its `comm` (it exited before it was read).
    pub fn from_comm(pid: u32, comm: &str, host_name: &str) -> ProcessInfo {
        let raw = RawProcess {
            comm: comm.to_owned(),
            ..RawProcess::default()
        };
        ProcessInfo {
            partial: true,
            ..ProcessInfo::from_raw(pid, &raw, host_name)
        }
    }
}

/// Kubernetes names, only where they are reliable: from the container runtime's record; else,
/// for a process in the `kubepods` cgroup hierarchy, started with `KUBERNETES_SERVICE_HOST`, in
/// a UTS namespace of its own (not a `hostNetwork` pod, whose `HOSTNAME` is the node's), the
/// pod name from `HOSTNAME` (wrong only for a pod that sets `spec.hostname`).
fn k8s_names(raw: &RawProcess, env: &EnvHints, cgroup: &CgroupInfo) -> K8sNames {
    let mut names = raw
        .runtime_config
        .as_deref()
        .and_then(k8s::names_from_runtime_config)
        .unwrap_or_default();
    let in_pod = cgroup.kubepods && env.kubernetes;
    if names.pod_name.is_none() && in_pod && raw.own_uts_namespace == Some(true) {
        names.pod_name = env.hostname.clone();
    }
    if names.pod_uid.is_none() && (in_pod || !names.is_empty()) {
        names.pod_uid = cgroup.pod_uid.clone();
    }
    if let Some(pod) = &raw.pod {
        names.add_pod_record(pod);
    }
    names
}

/// Everything a resource is built from.
struct ResourceInputs<'a> {
    pid: u32,
    service_name: &'a str,
    exe_name: &'a str,
    exe_path: &'a str,
    command_line: &'a str,
    host_name: &'a str,
    container_id: Option<&'a str>,
    k8s: &'a K8sNames,
    /// The node's name, for a process in a pod.
    node: Option<&'a str>,
    otel_resource_attributes: &'a [(String, String)],
}

/// The resource attributes, in a stable order: `service.name`, `process.pid`,
/// `process.executable.name`, `process.executable.path`, `process.command_line`, `host.name`,
/// `container.id`, `k8s.namespace.name`, `k8s.pod.name`, `k8s.pod.uid`, `k8s.container.name`,
/// `k8s.node.name`, the workload's (`k8s.deployment.name`, ...), `telemetry.distro.name`, then
/// the other keys of the pod's `resource.opentelemetry.io/*` annotations and of the process's
/// `OTEL_RESOURCE_ATTRIBUTES`.
///
/// A key of those annotations, then of `OTEL_RESOURCE_ATTRIBUTES`, replaces the derived value in place, except
/// `service.name` (decided by the rule above, where `OTEL_SERVICE_NAME` wins), `process.pid`
/// and `telemetry.distro.name` (they describe what ztrace observed). Empty values are left out.
fn build_resource(input: &ResourceInputs<'_>) -> Resource {
    let mut attributes: Vec<(String, AttrValue)> = Vec::with_capacity(16);
    let mut push = |key: &str, value: Option<&str>| {
        if let Some(v) = value.filter(|v| !v.is_empty()) {
            attributes.push((key.to_owned(), AttrValue::from(v)));
        }
    };
    push("service.name", Some(input.service_name));
    push("process.executable.name", Some(input.exe_name));
    push("process.executable.path", Some(input.exe_path));
    push("process.command_line", Some(input.command_line));
    push("host.name", Some(input.host_name));
    push("container.id", input.container_id);
    push("k8s.namespace.name", input.k8s.namespace.as_deref());
    push("k8s.pod.name", input.k8s.pod_name.as_deref());
    push("k8s.pod.uid", input.k8s.pod_uid.as_deref());
    push("k8s.container.name", input.k8s.container_name.as_deref());
    push("k8s.node.name", input.node);
    for (key, name) in input
        .k8s
        .workload()
        .map(|w| w.attributes)
        .unwrap_or_default()
    {
        push(key, Some(&name));
    }
    push("telemetry.distro.name", Some(DISTRO_NAME));
    attributes.insert(
        1,
        (
            "process.pid".to_owned(),
            AttrValue::Int(i64::from(input.pid)),
        ),
    );

    // The pod's `resource.opentelemetry.io/*` annotations, then the process's own
    // OTEL_RESOURCE_ATTRIBUTES: the process's word is the last.
    let annotations = input.k8s.resource_annotations.iter();
    for (key, value) in annotations.chain(input.otel_resource_attributes) {
        if matches!(
            key.as_str(),
            "service.name" | "process.pid" | "telemetry.distro.name"
        ) {
            continue;
        }
        let value = AttrValue::from(value.as_str());
        match attributes.iter_mut().find(|(k, _)| k == key) {
            Some(existing) => existing.1 = value,
            None => attributes.push((key.clone(), value)),
        }
    }
    Resource {
        service_name: input.service_name.to_owned(),
        attributes,
    }
}

/// Remembers the identity of recently seen processes, at most `capacity` of them.
///
/// When full, the least recently used eighth of the entries is dropped at once (so eviction
/// costs one sort per `capacity / 8` new processes, not one scan per process).
#[derive(Debug)]
pub struct ProcessCache {
    proc_root: PathBuf,
    host_name: String,
    /// The Kubernetes node's name, when the agent runs on one.
    node_name: Option<String>,
    capacity: usize,
    entries: HashMap<u32, CacheEntry>,
    clock: u64,
    /// The pods' labels and annotations, from the container runtime over CRI.
    pods: PodDirectory,
}

#[derive(Debug)]
struct CacheEntry {
    info: Arc<ProcessInfo>,
    last_used: u64,
    /// The kernel's `comm` the identity was read for: an exec changes it.
    comm: String,
    /// Start time of the process read (`/proc/PID/stat` field 22), to tell a reused pid.
    start_time: Option<u64>,
    /// When the entry was last found current.
    checked: std::time::Instant,
    /// Reads left for a process whose command line was about to change when read (see
    /// [`cmdline::title_pending`]): it is read again on its next use after [`PENDING_REREAD`].
    rereads: u8,
    /// The process runs in pod `.0`, which the runtime did not list when the process was read
    /// (the directory's generation was `.1`): it is read again once the runtime listed pods
    /// anew.
    pod_pending: Option<(String, u64)>,
}

impl CacheEntry {
    /// True when the process's title was pending when read and it is time to read it again.
    fn reread_due(&self) -> bool {
        self.rereads > 0 && self.checked.elapsed() >= PENDING_REREAD
    }
}

/// Least time between two reads of a process whose title was pending.
const PENDING_REREAD: std::time::Duration = std::time::Duration::from_millis(1);
/// Reads of a process whose title stays pending (the postmaster itself) before it is kept.
const PENDING_READS: u8 = 8;

/// Least time between two checks that a cached pid is still the same process.
const RECHECK: std::time::Duration = std::time::Duration::from_secs(2);

/// The start time of `pid` in clock ticks since boot (`/proc/PID/stat` field 22), which tells two
/// processes that had the same pid apart.
fn read_start_time(proc_root: &Path, pid: u32) -> Option<u64> {
    read_stat_field(proc_root, pid, 22)
}

/// Numeric field `field` (numbered from 1, as in proc(5)) of `/proc/PID/stat`, for a field after
/// the command name (field 2, in parentheses, which may contain anything): 3 and up.
pub fn read_stat_field(proc_root: &Path, pid: u32, field: usize) -> Option<u64> {
    let stat = fs::read_to_string(proc_root.join(pid.to_string()).join("stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    after
        .split_ascii_whitespace()
        .nth(field.checked_sub(3)?)?
        .parse()
        .ok()
}

impl Default for ProcessCache {
    fn default() -> Self {
        ProcessCache::new()
    }
}

impl ProcessCache {
    /// A cache of [`DEFAULT_CAPACITY`] processes read from `/proc`, with the host name read once.
    pub fn new() -> ProcessCache {
        ProcessCache::with_proc_root(DEFAULT_CAPACITY, "/proc")
    }

    /// A cache of `capacity` processes (at least 1) read from `proc_root` (e.g. `/host/proc`).
    pub fn with_proc_root(capacity: usize, proc_root: impl Into<PathBuf>) -> ProcessCache {
        let proc_root = proc_root.into();
        let host_name = read_host_name(&proc_root);
        ProcessCache::with_host_name(capacity, proc_root, host_name)
    }

    /// Like [`ProcessCache::with_proc_root`] with a given `host.name` (e.g. the node name).
    pub fn with_host_name(
        capacity: usize,
        proc_root: impl Into<PathBuf>,
        host_name: impl Into<String>,
    ) -> ProcessCache {
        ProcessCache {
            proc_root: proc_root.into(),
            host_name: host_name.into(),
            node_name: None,
            capacity: capacity.max(1),
            entries: HashMap::default(),
            clock: 0,
            pods: PodDirectory::default(),
        }
    }

    /// Where pod labels and annotations come from (see [`cri`]); off by default.
    pub fn set_pod_source(&mut self, source: PodSource) {
        self.pods = PodDirectory::new(source);
        self.entries.clear();
    }

    /// True when process `pid` was read while its pod was unknown and the runtime has listed
    /// pods since (asking it again when due).
    fn pod_now_known(&mut self, pid: u32) -> bool {
        let Some((uid, generation)) = self.entries.get(&pid).and_then(|e| e.pod_pending.clone())
        else {
            return false;
        };
        self.pods.poll(&uid);
        self.pods.generation() != generation
    }

    /// The agent runs on Kubernetes node `node`: it is `k8s.node.name` of processes in pods and
    /// `host.name` of every process (a pod's own host name is its pod's name). Forgets what
    /// was read so far.
    pub fn set_node_name(&mut self, node: Option<String>) {
        if let Some(name) = node.as_ref().filter(|n| !n.is_empty()) {
            self.host_name = name.clone();
            self.node_name = node;
            self.entries.clear();
        }
    }

    /// The identity of process `pid`, read from `/proc` on first use. Never fails: when the
    /// process has already exited, the identity is built from `comm_hint` (and marked `partial`).
    pub fn get_or_load(&mut self, pid: u32, comm_hint: &str) -> Arc<ProcessInfo> {
        self.clock += 1;
        if self.pod_now_known(pid) {
            return self.load(pid, comm_hint);
        }
        if let Some(entry) = self.entries.get_mut(&pid) {
            if !entry.reread_due() {
                entry.last_used = self.clock;
                return entry.info.clone();
            }
        }
        self.load(pid, comm_hint)
    }

    /// Like [`ProcessCache::get_or_load`], for a moment when `pid` surely runs (it just opened a
    /// connection) and `comm` is its current kernel name: a cached identity is read again when
    /// the process has exec'd another program since (`comm` changed) or when the pid now belongs
    /// to another process (its start time changed; checked at most every [`RECHECK`]).
    pub fn refresh(&mut self, pid: u32, comm: &str) -> Arc<ProcessInfo> {
        self.clock += 1;
        if self.pod_now_known(pid) {
            return self.load(pid, comm);
        }
        if let Some(entry) = self.entries.get_mut(&pid) {
            let current = entry.comm == comm
                && (entry.checked.elapsed() < RECHECK || {
                    let now_start = read_start_time(&self.proc_root, pid);
                    entry.checked = std::time::Instant::now();
                    now_start.is_none() || now_start == entry.start_time
                });
            if current && !entry.reread_due() {
                entry.last_used = self.clock;
                return entry.info.clone();
            }
            if !current {
                tracing::debug!(pid, was = %entry.comm, now = %comm, "process identity changed (exec or reused pid)");
                self.entries.remove(&pid);
            }
        }
        self.load(pid, comm)
    }

    /// The process did something (moved bytes): a process whose title was pending when read is
    /// read again (at most every [`PENDING_REREAD`], [`PENDING_READS`] times), so that its spans
    /// get the title it set once started.
    pub fn on_activity(&mut self, pid: u32) {
        let pod_known = self.pod_now_known(pid);
        if let Some(comm) = self
            .entries
            .get(&pid)
            .filter(|e| pod_known || e.reread_due())
            .map(|e| e.comm.clone())
        {
            self.load(pid, &comm);
        }
    }

    fn load(&mut self, pid: u32, comm_hint: &str) -> Arc<ProcessInfo> {
        // A process read again because its title was pending keeps counting its reads.
        let previous = self.entries.remove(&pid);
        let rereads = previous
            .as_ref()
            .map_or(PENDING_READS, |e| e.rereads.saturating_sub(1));
        let start_time = read_start_time(&self.proc_root, pid);
        let mut pod_pending = None;
        let (info, pending) = match (RawProcess::read(&self.proc_root, pid, comm_hint), previous) {
            (Ok(mut raw), _) => {
                if let Some(uid) = raw.pod_uid() {
                    raw.pod = self.pods.lookup(&uid);
                    if raw.pod.is_none() && self.pods.may_appear(&uid) {
                        pod_pending = Some((uid, self.pods.generation()));
                    }
                }
                let info = ProcessInfo::from_raw_on_node(
                    pid,
                    &raw,
                    &self.host_name,
                    self.node_name.as_deref(),
                );
                let pending =
                    cmdline::title_pending(&info.exe_name, &cmdline::split_cmdline(&raw.cmdline));
                (info, pending)
            }
            // Gone before it could be read again: what was read before stays.
            (Err(_), Some(mut entry)) => {
                entry.rereads = 0;
                entry.pod_pending = None;
                entry.last_used = self.clock;
                let info = entry.info.clone();
                self.entries.insert(pid, entry);
                return info;
            }
            (Err(error), None) => {
                tracing::debug!(%error, pid, "process identity from its comm only");
                (
                    ProcessInfo::from_comm(pid, comm_hint, &self.host_name),
                    false,
                )
            }
        };
        tracing::debug!(pid, service = %info.service_name, source = info.service_name_source.as_str(), cmd = %info.command_line, pending, rereads, "new process");
        let info = Arc::new(info);
        if self.entries.len() >= self.capacity {
            self.evict();
        }
        let entry = CacheEntry {
            info: info.clone(),
            last_used: self.clock,
            comm: comm_hint.to_owned(),
            start_time,
            checked: std::time::Instant::now(),
            rereads: if pending { rereads } else { 0 },
            pod_pending,
        };
        self.entries.insert(pid, entry);
        info
    }

    /// The cached identity of `pid`, without reading `/proc`.
    pub fn get(&self, pid: u32) -> Option<Arc<ProcessInfo>> {
        self.entries.get(&pid).map(|e| e.info.clone())
    }

    /// Forgets `pid` (its process exited; the pid may be reused).
    pub fn forget(&mut self, pid: u32) {
        self.entries.remove(&pid);
    }

    /// Number of processes remembered.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The `host.name` given to every resource.
    pub fn host_name(&self) -> &str {
        &self.host_name
    }

    /// Drops the least recently used eighth of the entries (at least one).
    fn evict(&mut self) {
        let mut ages: Vec<u64> = self.entries.values().map(|e| e.last_used).collect();
        let n = (self.entries.len() / 8).max(1);
        let (_, cutoff, _) = ages.select_nth_unstable(n - 1);
        let cutoff = *cutoff;
        self.entries.retain(|_, e| e.last_used > cutoff);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f4b0c1d2e3f405162738495a6b7c8d9e0f1a2b3c4d5e6f708192a3b4c5d6e7f";

    fn attr<'a>(r: &'a Resource, key: &str) -> Option<&'a AttrValue> {
        r.attributes.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    fn keys(r: &Resource) -> Vec<&str> {
        r.attributes.iter().map(|(k, _)| k.as_str()).collect()
    }

    fn raw(exe: &str, cmdline: &[u8], environ: &[u8]) -> RawProcess {
        RawProcess {
            exe_path: Some(exe.to_owned()),
            comm: file_name(exe).chars().take(15).collect(),
            cmdline: cmdline.to_vec(),
            environ: Some(environ.to_vec()),
            ..RawProcess::default()
        }
    }

    #[test]
    fn otel_service_name_wins() {
        let env = b"OTEL_SERVICE_NAME=checkout\0OTEL_RESOURCE_ATTRIBUTES=service.name=other,deployment.environment=prod,host.name=h2,process.pid=1\0";
        let info = ProcessInfo::from_raw(
            42,
            &raw("/usr/bin/python3.11", b"python3\0app.py\0", env),
            "box",
        );
        assert_eq!(info.service_name, "checkout");
        assert_eq!(info.service_name_source, ServiceNameSource::OtelServiceName);
        let r = &info.resource;
        assert_eq!(r.service_name, "checkout");
        assert_eq!(
            keys(r),
            [
                "service.name",
                "process.pid",
                "process.executable.name",
                "process.executable.path",
                "process.command_line",
                "host.name",
                "telemetry.distro.name",
                "deployment.environment",
            ]
        );
        assert_eq!(
            attr(r, "service.name"),
            Some(&AttrValue::Str("checkout".into()))
        );
        assert_eq!(attr(r, "process.pid"), Some(&AttrValue::Int(42)));
        assert_eq!(attr(r, "host.name"), Some(&AttrValue::Str("h2".into())));
        assert_eq!(
            attr(r, "process.executable.name"),
            Some(&AttrValue::Str("python3.11".into()))
        );
        assert_eq!(
            attr(r, "telemetry.distro.name"),
            Some(&AttrValue::Str("ztrace".into()))
        );
    }

    #[test]
    fn resource_attributes_service_name_is_second() {
        let env = b"OTEL_RESOURCE_ATTRIBUTES=service.name=billing\0";
        let info =
            ProcessInfo::from_raw(7, &raw("/usr/bin/node", b"node\0server.js\0", env), "box");
        assert_eq!(info.service_name, "billing");
        assert_eq!(
            info.service_name_source,
            ServiceNameSource::OtelResourceAttributes
        );
    }

    #[test]
    fn interpreters_name_their_program_and_secrets_are_redacted() {
        let cmd = b"/usr/bin/java\0-Dspring.datasource.password=pw\0-jar\0/app/orders-1.4.2.jar\0--token\0abc\0";
        let info = ProcessInfo::from_raw(9, &raw("/usr/lib/jvm/java-21/bin/java", cmd, b""), "box");
        assert_eq!(info.service_name, "orders");
        assert_eq!(info.service_name_source, ServiceNameSource::Program);
        assert_eq!(
            info.command_line,
            "/usr/bin/java -Dspring.datasource.password=REDACTED -jar /app/orders-1.4.2.jar --token REDACTED"
        );
        assert_eq!(
            attr(&info.resource, "process.command_line"),
            Some(&AttrValue::from(info.command_line.as_str()))
        );
    }

    #[test]
    fn executables_name_themselves() {
        let info = ProcessInfo::from_raw(
            3,
            &raw("/usr/sbin/nginx", b"nginx: worker process\0", b""),
            "",
        );
        assert_eq!(info.service_name, "nginx");
        assert_eq!(info.service_name_source, ServiceNameSource::Executable);
        assert_eq!(info.exe_path, "/usr/sbin/nginx");
        assert!(!keys(&info.resource).contains(&"host.name"));
    }

    #[test]
    fn multi_call_executables_are_named_as_they_were_run() {
        let mut r = raw(
            "/usr/bin/redis-check-rdb",
            b"redis-server 127.0.0.1:6379\0",
            b"",
        );
        r.comm = "redis-server".into();
        let info = ProcessInfo::from_raw(3, &r, "");
        assert_eq!(info.service_name, "redis-server");
        assert_eq!(info.exe_name, "redis-check-rdb");
        let mut r = raw("/usr/bin/python3.11", b"python3\0", b"");
        r.comm = "python3".into();
        assert_eq!(
            ProcessInfo::from_raw(3, &r, "").service_name,
            "python3.11",
            "a prefix is the same program"
        );
    }

    #[test]
    fn gone_processes_use_their_comm() {
        let info = ProcessInfo::from_comm(11, "curl", "box");
        assert!(info.partial);
        assert_eq!(info.service_name, "curl");
        assert_eq!(info.service_name_source, ServiceNameSource::Comm);
        assert_eq!(info.exe_name, "curl");
        assert_eq!(info.exe_path, "");
        assert_eq!(
            keys(&info.resource),
            [
                "service.name",
                "process.pid",
                "process.executable.name",
                "host.name",
                "telemetry.distro.name"
            ]
        );
        let nameless = ProcessInfo::from_comm(12, "", "box");
        assert_eq!(nameless.service_name, "unknown_service:12");
    }

    #[test]
    fn service_name_from_the_pods_annotation_then_its_label_then_its_workload() {
        let mut r = raw("/usr/bin/node", b"node\0server.js\0", b"");
        r.cgroup = Some(format!("0::/k8s.io/{ID}\n"));
        r.runtime_config = Some(
            br#"{"annotations":{"io.kubernetes.cri.container-name":"web","io.kubernetes.cri.sandbox-name":"cart-5f8d7b9c4d-6wkzt","io.kubernetes.cri.sandbox-namespace":"shop","io.kubernetes.cri.sandbox-uid":"u-1"}}"#.to_vec(),
        );
        assert_eq!(r.pod_uid().as_deref(), Some("u-1"));
        let record = |labels: &[(&str, &str)], annotations: &[(&str, &str)]| {
            Some(Arc::new(PodRecord {
                uid: "u-1".into(),
                name: "cart-5f8d7b9c4d-6wkzt".into(),
                namespace: "shop".into(),
                labels: labels
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
                resource_annotations: annotations
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            }))
        };
        let name = |r: &RawProcess| {
            let info = ProcessInfo::from_raw(7, r, "node-1");
            (info.service_name.clone(), info.service_name_source)
        };
        // No pod record: the workload inferred from the pod name.
        assert_eq!(name(&r), ("cart".into(), ServiceNameSource::K8sWorkload));
        // The controller's label names the workload exactly.
        r.pod = record(&[("pod-template-hash", "5f8d7b9c4d")], &[]);
        assert_eq!(name(&r), ("cart".into(), ServiceNameSource::K8sWorkload));
        r.pod = record(
            &[
                ("app.kubernetes.io/name", "cart-frontend"),
                ("pod-template-hash", "5f8d7b9c4d"),
            ],
            &[],
        );
        assert_eq!(
            name(&r),
            ("cart-frontend".into(), ServiceNameSource::K8sLabel)
        );
        r.pod = record(
            &[("app.kubernetes.io/name", "cart-frontend")],
            &[("service.name", "storefront"), ("team", "shop-team")],
        );
        assert_eq!(
            name(&r),
            ("storefront".into(), ServiceNameSource::K8sAnnotation)
        );
        let info = ProcessInfo::from_raw(7, &r, "node-1");
        assert_eq!(
            attr(&info.resource, "team"),
            Some(&AttrValue::Str("shop-team".into()))
        );
        // The process's own word is first.
        r.environ = Some(b"OTEL_RESOURCE_ATTRIBUTES=service.name=own\0".to_vec());
        assert_eq!(
            name(&r),
            ("own".into(), ServiceNameSource::OtelResourceAttributes)
        );
    }

    #[test]
    fn kubernetes_names_from_the_runtime_record() {
        let mut r = raw(
            "/usr/local/bin/python3.12",
            b"python3\0app.py\0",
            b"KUBERNETES_SERVICE_HOST=10.96.0.1\0",
        );
        r.cgroup = Some(format!(
            "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0c5a4b1e_2d4e_4c1a_9d9e_0123456789ab.slice/cri-containerd-{ID}.scope\n"
        ));
        r.runtime_config = Some(
            br#"{"annotations":{"io.kubernetes.cri.container-name":"api","io.kubernetes.cri.sandbox-name":"orders-7d9c4b8f6-x2x9q","io.kubernetes.cri.sandbox-namespace":"shop"}}"#.to_vec(),
        );
        let info = ProcessInfo::from_raw_on_node(5, &r, "node-1", Some("node-1"));
        assert_eq!(info.service_name, "orders");
        assert_eq!(info.service_name_source, ServiceNameSource::K8sWorkload);
        assert_eq!(info.container_id.as_deref(), Some(ID));
        assert_eq!(
            keys(&info.resource),
            [
                "service.name",
                "process.pid",
                "process.executable.name",
                "process.executable.path",
                "process.command_line",
                "host.name",
                "container.id",
                "k8s.namespace.name",
                "k8s.pod.name",
                "k8s.pod.uid",
                "k8s.container.name",
                "k8s.node.name",
                "k8s.replicaset.name",
                "k8s.deployment.name",
                "telemetry.distro.name",
            ]
        );
        assert_eq!(
            attr(&info.resource, "k8s.pod.uid"),
            Some(&AttrValue::Str(
                "0c5a4b1e-2d4e-4c1a-9d9e-0123456789ab".into()
            ))
        );
        assert_eq!(
            attr(&info.resource, "k8s.deployment.name"),
            Some(&AttrValue::Str("orders".into()))
        );
        // A process outside any pod gets no node name.
        let host = ProcessInfo::from_raw_on_node(
            6,
            &raw("/usr/bin/curl", b"curl\0", b""),
            "node-1",
            Some("node-1"),
        );
        assert_eq!(attr(&host.resource, "k8s.node.name"), None);
        assert_eq!(
            attr(&host.resource, "host.name"),
            Some(&AttrValue::Str("node-1".into()))
        );
    }

    #[test]
    fn the_pods_resource_annotations_come_after_the_processs_own_variables() {
        let record = br#"{"annotations":{"io.kubernetes.cri.container-name":"api","io.kubernetes.cri.sandbox-name":"orders-7d9c4b8f6-x2x9q",
            "resource.opentelemetry.io/service.name":"orders-api","resource.opentelemetry.io/deployment.environment.name":"prod",
            "resource.opentelemetry.io/team":"shop"}}"#;
        let mut r = raw(
            "/usr/bin/python3",
            b"python3\0app.py\0",
            b"OTEL_RESOURCE_ATTRIBUTES=team=payments\0",
        );
        r.runtime_config = Some(record.to_vec());
        let info = ProcessInfo::from_raw(7, &r, "node-1");
        assert_eq!(
            (info.service_name.as_str(), info.service_name_source),
            ("orders-api", ServiceNameSource::K8sAnnotation)
        );
        assert_eq!(
            attr(&info.resource, "deployment.environment.name"),
            Some(&AttrValue::Str("prod".into()))
        );
        assert_eq!(
            attr(&info.resource, "team"),
            Some(&AttrValue::Str("payments".into()))
        );
        r.environ = Some(b"OTEL_SERVICE_NAME=checkout\0".to_vec());
        let info = ProcessInfo::from_raw(7, &r, "node-1");
        assert_eq!(
            (info.service_name.as_str(), info.service_name_source),
            ("checkout", ServiceNameSource::OtelServiceName)
        );
    }

    #[test]
    fn kubernetes_container_name_when_the_pod_is_unknown() {
        let mut r = raw("/app/server", b"/app/server\0", b"");
        r.runtime_config =
            Some(br#"{"annotations":{"io.kubernetes.container.name":"gateway"}}"#.to_vec());
        let info = ProcessInfo::from_raw(5, &r, "node-1");
        assert_eq!(info.service_name, "gateway");
        assert_eq!(info.service_name_source, ServiceNameSource::K8sContainer);
    }

    #[test]
    fn hostname_is_a_pod_name_only_when_reliable() {
        let env = b"KUBERNETES_SERVICE_HOST=10.96.0.1\0HOSTNAME=web-0\0";
        let mut r = raw("/usr/bin/node", b"node\0server.js\0", env);
        r.cgroup = Some(format!(
            "11:memory:/kubepods/besteffort/pod0c5a4b1e-2d4e-4c1a-9d9e-0123456789ab/{ID}\n"
        ));
        r.own_uts_namespace = Some(true);
        let info = ProcessInfo::from_raw(5, &r, "node-1");
        assert_eq!(
            (info.service_name.as_str(), info.service_name_source),
            ("web", ServiceNameSource::K8sWorkload)
        );
        assert_eq!(info.k8s.pod_name.as_deref(), Some("web-0"));

        // A hostNetwork pod: HOSTNAME is the node's.
        r.own_uts_namespace = Some(false);
        let info = ProcessInfo::from_raw(5, &r, "node-1");
        assert_eq!(
            (info.service_name.as_str(), info.service_name_source),
            ("server", ServiceNameSource::Program)
        );
        assert_eq!(info.k8s.pod_name, None);
        assert_eq!(
            info.k8s.pod_uid.as_deref(),
            Some("0c5a4b1e-2d4e-4c1a-9d9e-0123456789ab")
        );

        // A Docker container that happens to have KUBERNETES_SERVICE_HOST.
        r.own_uts_namespace = Some(true);
        r.cgroup = Some(format!("0::/system.slice/docker-{ID}.scope\n"));
        let info = ProcessInfo::from_raw(5, &r, "node-1");
        assert_eq!(info.service_name_source, ServiceNameSource::Program);
        assert!(info.k8s.is_empty());
    }

    #[test]
    fn reads_the_real_proc_self() {
        let pid = std::process::id();
        let raw = RawProcess::read(Path::new("/proc"), pid, "hint").expect("read /proc/self");
        assert!(raw.exe_path.as_deref().is_some_and(|p| p.starts_with('/')));
        assert!(!raw.cmdline.is_empty());
        assert!(!raw.comm.is_empty());
        let mut cache = ProcessCache::new();
        let info = cache.get_or_load(pid, "hint");
        assert!(!info.partial);
        assert_eq!(info.pid, pid);
        let exe = std::env::current_exe().expect("current exe");
        assert_eq!(info.exe_path, exe.to_string_lossy());
        assert_eq!(info.service_name, info.exe_name);
        assert_eq!(
            info.resource.attributes[1],
            ("process.pid".to_owned(), AttrValue::Int(i64::from(pid)))
        );
        assert!(Arc::ptr_eq(&info, &cache.get_or_load(pid, "other")));
    }

    #[test]
    fn cache_survives_gone_processes_and_stays_bounded() {
        let dir = std::env::temp_dir().join(format!("ztrace-discovery-{}", std::process::id()));
        let mut cache = ProcessCache::with_host_name(16, &dir, "box");
        let info = cache.get_or_load(123, "short-lived");
        assert!(info.partial);
        assert_eq!(info.service_name, "short-lived");
        for pid in 0..100 {
            cache.get_or_load(pid, "x");
            // pid 123 stays in use, so it is never the least recently used.
            cache.get_or_load(123, "short-lived");
            assert!(cache.len() <= 16);
        }
        assert!(cache.get(123).is_some());
        assert!(cache.get(99).is_some());
        assert!(cache.get(0).is_none());
        cache.forget(123);
        assert!(cache.get(123).is_none());
    }

    /// An empty directory to play `/proc` in.
    fn fake_root(tag: &str) -> PathBuf {
        let root = std::env::temp_dir().join(format!("ztrace-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        root
    }

    /// A fake `/proc/PID` with the files the cache reads.
    fn fake_process(root: &Path, pid: u32, comm: &str, cmdline: &str, start_time: u64) {
        let dir = root.join(pid.to_string());
        fs::create_dir_all(&dir).expect("mkdir");
        fs::write(dir.join("comm"), format!("{comm}\n")).expect("comm");
        fs::write(dir.join("cmdline"), cmdline.replace(' ', "\0")).expect("cmdline");
        let stat = format!("{pid} ({comm}) S 1 1 1 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 {start_time} 1000 10 18446744073709551615");
        fs::write(dir.join("stat"), stat).expect("stat");
    }

    #[test]
    fn an_exec_or_a_reused_pid_gets_a_new_identity() {
        let root = fake_root("refresh");
        fake_process(&root, 40, "sh", "/bin/sh start.sh", 1000);
        let mut cache = ProcessCache::with_host_name(16, &root, "box");
        let first = cache.refresh(40, "sh");
        assert_eq!(first.command_line, "/bin/sh start.sh");
        assert!(
            Arc::ptr_eq(&first, &cache.refresh(40, "sh")),
            "same comm, within the recheck time: cached"
        );

        // The shell exec'd the service: same pid, new comm.
        fake_process(&root, 40, "orders", "/usr/bin/orders --port 8080", 1000);
        let exec = cache.refresh(40, "orders");
        assert_eq!(exec.command_line, "/usr/bin/orders --port 8080");
        assert!(Arc::ptr_eq(&exec, &cache.get_or_load(40, "orders")));

        // The process exited and its pid went to another one with the same name.
        fake_process(&root, 40, "orders", "/usr/bin/orders --port 9090", 5000);
        if let Some(entry) = cache.entries.get_mut(&40) {
            entry.checked -= RECHECK; // as if the recheck time had passed
        }
        let reused = cache.refresh(40, "orders");
        assert_eq!(reused.command_line, "/usr/bin/orders --port 9090");
        let _ = fs::remove_dir_all(&root);
    }

    #[test]
    fn a_process_read_before_its_pod_was_listed_is_read_again_once_it_is() {
        const UID: &str = "7e1d2c3b-4a59-4687-9a0b-1c2d3e4f5a6b";
        let root = fake_root("podlate");
        fake_process(&root, 41, "node", "node server.js", 1000);
        fs::write(
            root.join("41/cgroup"),
            format!("0::/kubepods/besteffort/pod{UID}/{ID}\n"),
        )
        .expect("cgroup");
        let mut cache = ProcessCache::with_host_name(16, &root, "node-1");
        // A source that cannot answer now: the pod is unknown when the process is first read.
        cache.set_pod_source(PodSource::Sockets(vec![PathBuf::from(
            "/nonexistent/ztrace-test.sock",
        )]));
        let before = cache.get_or_load(41, "node");
        assert_eq!(before.service_name_source, ServiceNameSource::Program);
        assert!(Arc::ptr_eq(&before, &cache.get_or_load(41, "node")));
        // The runtime lists the pod.
        let sandbox = cri::proto::PodSandbox {
            id: "s1".into(),
            metadata: Some(cri::proto::PodSandboxMetadata {
                name: "checkout-5f8d7b9c4d-6wkzt".into(),
                uid: UID.into(),
                namespace: "shop".into(),
                attempt: 0,
            }),
            labels: [
                (
                    "app.kubernetes.io/name".to_owned(),
                    "checkout-frontend".to_owned(),
                ),
                ("pod-template-hash".to_owned(), "5f8d7b9c4d".to_owned()),
            ]
            .into(),
            ..cri::proto::PodSandbox::default()
        };
        cache.pods.take_list(vec![sandbox]);
        let after = cache.get_or_load(41, "node");
        assert_eq!(after.service_name, "checkout-frontend");
        assert_eq!(after.service_name_source, ServiceNameSource::K8sLabel);
        assert_eq!(after.k8s.namespace.as_deref(), Some("shop"));
        assert_eq!(
            attr(&after.resource, "k8s.deployment.name"),
            Some(&AttrValue::Str("checkout".into()))
        );
        // Read again once only.
        assert!(Arc::ptr_eq(&after, &cache.get_or_load(41, "node")));
        let _ = fs::remove_dir_all(&root);
    }

    #[test]
    fn a_postgres_backend_is_read_again_once_it_has_its_title() {
        let postmaster = "/usr/lib/postgresql/15/bin/postgres -D /srv/pg";
        let root = fake_root("pgtitle");
        let mut cache = ProcessCache::with_host_name(16, &root, "box");
        // Just forked from the postmaster: its command line is still the postmaster's.
        fake_process(&root, 50, "postgres", postmaster, 1000);
        assert_eq!(cache.refresh(50, "postgres").command_line, postmaster);

        // It set its title, over the longer command line (NULs after it).
        let title = b"postgres: app orders 127.0.0.1(51094) initializing\0\0\0\0\0\0\0\0\0\0\0\0";
        fs::write(root.join("50/cmdline"), title).expect("cmdline");
        std::thread::sleep(PENDING_REREAD);
        cache.on_activity(50);
        let titled = cache.get_or_load(50, "postgres");
        assert_eq!(titled.command_line, "postgres: app orders 127.0.0.1(51094)");
        assert_eq!(titled.service_name, "postgres");

        // Read for good: a later title is not read again, and a gone backend keeps its identity.
        fs::write(
            root.join("50/cmdline"),
            b"postgres: app orders 127.0.0.1(51094) SELECT\0",
        )
        .expect("cmdline");
        std::thread::sleep(PENDING_REREAD);
        cache.on_activity(50);
        assert!(Arc::ptr_eq(&titled, &cache.get_or_load(50, "postgres")));

        // A backend that exits before it is read again keeps what was read.
        fake_process(&root, 51, "postgres", postmaster, 1000);
        let early = cache.refresh(51, "postgres");
        fs::remove_dir_all(root.join("51")).expect("rm");
        std::thread::sleep(PENDING_REREAD);
        cache.on_activity(51);
        assert!(Arc::ptr_eq(&early, &cache.get_or_load(51, "postgres")));

        // The postmaster itself keeps its command line: read a few times, then left alone.
        fake_process(&root, 49, "postgres", postmaster, 900);
        cache.refresh(49, "postgres");
        for _ in 0..2 * PENDING_READS {
            std::thread::sleep(PENDING_REREAD);
            cache.on_activity(49);
        }
        assert_eq!(cache.entries.get(&49).map(|e| e.rereads), Some(0));
        let _ = fs::remove_dir_all(&root);
    }

    #[test]
    fn start_time_is_read_after_a_command_name_with_spaces_and_parentheses() {
        let root = std::env::temp_dir().join(format!("ztrace-stat-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        fake_process(&root, 7, "a) b (c", "x", 424242);
        assert_eq!(read_start_time(&root, 7), Some(424242));
        assert_eq!(read_start_time(&root, 8), None);
        let _ = fs::remove_dir_all(&root);
        let real = read_start_time(Path::new("/proc"), std::process::id());
        assert!(real.is_some_and(|t| t > 0), "{real:?}");
    }
}
