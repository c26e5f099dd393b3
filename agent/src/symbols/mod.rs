//! Stacks → function, file and line: unwinding the user stacks the kernel sends with client
//! requests and symbolizing them with the binaries' DWARF, on a worker thread.
//!
//! `procmaps` finds which file an address belongs to, `module` loads one ELF file (CFI, DWARF,
//! symbols, separate debug files, and through `golang::pclntab` Go's own table when DWARF is stripped), `cache` keeps modules per file and build id within a byte
//! budget, `unwind` walks a stack, `app` decides which frame is the application's, and `join`
//! holds client spans until their stack is symbolized. The capture loop never waits for this
//! module: requests go through a bounded queue (`try_send`, counted when full) and results
//! come back on a channel that the loop drains.

pub mod app;
pub mod cache;
pub mod join;
pub mod module;
pub mod procmaps;
pub mod unwind;

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    rc::Rc,
    sync::{
        atomic::Ordering,
        mpsc::{self, Receiver, SyncSender, TrySendError},
        Arc,
    },
    time::{Duration, Instant},
};

use gimli::UnwindContext;

use self::{
    cache::{Lookup, ModuleCache},
    module::Module,
    procmaps::Mapping,
    unwind::{Regs, StackMemory, Step},
};
use crate::{
    conn::ConnKey,
    metrics::Metrics,
    spans::{AttrValue, Attribute},
};

/// Most frames unwound and shown.
pub const MAX_FRAMES: usize = 64;
/// Stack requests waiting for the worker.
const QUEUE: usize = 1024;
/// A process's maps are read again after this long (or at once when an address is in none).
const MAPS_TTL: Duration = Duration::from_secs(5);
/// Processes whose maps are kept.
const MAX_PROCESSES: usize = 4096;
/// Past this many processes kept, the maps older than [`MAPS_TTL`] are dropped at the next
/// insert (at most once per [`PRUNE_EVERY`]): they would be read again before use anyway, and
/// under process churn (thousands of short-lived clients a minute) they are mostly of
/// processes that have exited.
const PRUNE_AT: usize = 256;
/// Least time between two prunes: under churn more than [`PRUNE_AT`] maps are younger than
/// [`MAPS_TTL`], and a walk of them all at every insert took 9% of the agent's CPU.
const PRUNE_EVERY: Duration = Duration::from_secs(1);

/// One frame of a symbolized stack (inlined functions are frames of their own).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub function: Option<String>,
    pub file: Option<String>,
    pub line: Option<u32>,
    /// Path of the file the address is in, as the process sees it.
    pub module_path: String,
    /// Inlined into the frame that follows.
    pub inlined: bool,
}

impl Frame {
    /// `function (file:line)`, `function (module)`, or `?? (module)`.
    pub fn render(&self) -> String {
        let function = self.function.as_deref().unwrap_or("??");
        match (&self.file, self.line) {
            (Some(file), Some(line)) => format!("{function} ({file}:{line})"),
            (Some(file), None) => format!("{function} ({file})"),
            _ => {
                let module = Path::new(&self.module_path)
                    .file_name()
                    .map_or(self.module_path.as_str(), |n| n.to_str().unwrap_or("?"));
                format!("{function} ({module})")
            }
        }
    }
}

/// A symbolized stack, innermost frame first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StackTrace {
    pub frames: Vec<Frame>,
    /// The process is an interpreter or VM: the frames are its own native ones, not the script's.
    pub native_only: bool,
}

impl StackTrace {
    /// The span attributes of this stack: `code.stacktrace`, the application frame's
    /// `code.function.name`, `code.file.path`, `code.line.number`, and `ztrace.stack=native`
    /// for interpreters.
    pub fn attributes(&self) -> Vec<Attribute> {
        let mut attrs = Vec::with_capacity(5);
        if self.frames.is_empty() {
            return attrs;
        }
        let text: Vec<String> = self.frames.iter().map(Frame::render).collect();
        attrs.push(Attribute::new("code.stacktrace", text.join("\n")));
        if let Some(f) = self.frames.iter().find(|f| app::is_app_frame(f)) {
            if let Some(function) = &f.function {
                attrs.push(Attribute::new("code.function.name", function.as_str()));
            }
            if let Some(file) = &f.file {
                attrs.push(Attribute::new("code.file.path", file.as_str()));
            }
            if let Some(line) = f.line {
                attrs.push(Attribute {
                    key: "code.line.number",
                    value: AttrValue::Int(i64::from(line)),
                });
            }
        }
        if self.native_only {
            attrs.push(Attribute::new("ztrace.stack", "native"));
        }
        attrs
    }
}

/// A stack as the kernel sent it.
#[derive(Debug)]
pub struct StackRequest {
    pub key: ConnKey,
    pub ts_ns: u64,
    pub regs: Regs,
    /// Frame-pointer walk by the kernel, innermost first.
    pub ips: Vec<u64>,
    /// Top of the stack from `regs.rsp` up.
    pub stack: Vec<u8>,
    /// The HTTP/2 stream whose request this stack is for (the stack of the goroutine that
    /// created it, grpc-go), rather than the request that began at `ts_ns`.
    pub stream: Option<u64>,
}

/// A symbolized stack for the request that began at `ts_ns` on `key`.
#[derive(Debug)]
pub struct StackResult {
    pub key: ConnKey,
    pub ts_ns: u64,
    /// See [`StackRequest::stream`].
    pub stream: Option<u64>,
    pub trace: Arc<StackTrace>,
}

/// Settings of the symbolizer.
#[derive(Clone, Debug)]
pub struct SymbolizerConfig {
    /// Directories holding `.build-id/xx/yyyy.debug` files.
    pub debug_dirs: Vec<PathBuf>,
    /// Bytes of loaded modules kept.
    pub max_bytes: usize,
}

/// The capture loop's end of the symbolizer.
pub struct SymbolizerHandle {
    tx: SyncSender<StackRequest>,
    pub results: Receiver<StackResult>,
}

impl SymbolizerHandle {
    /// Queues a stack without waiting; `false` (counted) when the queue is full.
    pub fn submit(&self, req: StackRequest, metrics: &Metrics) -> bool {
        match self.tx.try_send(req) {
            Ok(()) => {
                Metrics::inc(&metrics.stacks_received);
                true
            }
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                Metrics::inc(&metrics.stacks_dropped_queue_full);
                false
            }
        }
    }
}

/// Starts the symbolizer's worker thread.
pub fn spawn(config: SymbolizerConfig, metrics: Arc<Metrics>) -> SymbolizerHandle {
    let (tx, rx) = mpsc::sync_channel::<StackRequest>(QUEUE);
    let (result_tx, results) = mpsc::channel();
    std::thread::Builder::new()
        .name("ztrace-symbols".into())
        .spawn(move || {
            let mut worker = Symbolizer::new(config);
            while let Ok(req) = rx.recv() {
                let trace = Arc::new(worker.symbolize(&req));
                worker.report(&metrics);
                Metrics::inc(&metrics.stacks_symbolized);
                if result_tx
                    .send(StackResult {
                        key: req.key,
                        ts_ns: req.ts_ns,
                        stream: req.stream,
                        trace,
                    })
                    .is_err()
                {
                    break;
                }
            }
        })
        .map_or_else(
            |e| tracing::warn!(error = %e, "could not start the symbolizer thread"),
            |_| (),
        );
    SymbolizerHandle { tx, results }
}

/// The worker's state: process maps and loaded modules.
pub struct Symbolizer {
    config: SymbolizerConfig,
    maps: HashMap<u32, (Arc<Vec<Mapping>>, Instant)>,
    /// When [`Self::maps`] was last pruned.
    pruned: Instant,
    modules: ModuleCache,
    unwind_ctx: UnwindContext<usize>,
    load_errors: u64,
}

/// Executable names whose native frames say nothing of the program they run.
const INTERPRETERS: &[&str] = &[
    "python", "node", "ruby", "java", "php", "perl", "bun", "deno", "dotnet",
];

impl Symbolizer {
    pub fn new(config: SymbolizerConfig) -> Self {
        let modules = ModuleCache::new(config.max_bytes);
        Symbolizer {
            config,
            maps: HashMap::new(),
            pruned: Instant::now(),
            modules,
            unwind_ctx: UnwindContext::new(),
            load_errors: 0,
        }
    }

    fn report(&self, metrics: &Metrics) {
        metrics
            .symbol_cache_hits
            .store(self.modules.hits, Ordering::Relaxed);
        metrics
            .symbol_cache_misses
            .store(self.modules.misses, Ordering::Relaxed);
        metrics
            .symbol_modules_evicted
            .store(self.modules.evicted, Ordering::Relaxed);
        metrics
            .symbol_load_errors
            .store(self.load_errors, Ordering::Relaxed);
        metrics
            .symbol_bytes
            .store(self.modules.bytes() as u64, Ordering::Relaxed);
    }

    /// Bytes held by loaded modules.
    pub fn module_bytes(&self) -> usize {
        self.modules.bytes()
    }

    /// (hits, misses) of the module cache.
    pub fn cache_stats(&self) -> (u64, u64) {
        (self.modules.hits, self.modules.misses)
    }

    fn maps_of(&mut self, pid: u32, refresh: bool) -> Arc<Vec<Mapping>> {
        if let Some((maps, at)) = self.maps.get(&pid) {
            if !refresh && at.elapsed() < MAPS_TTL {
                return maps.clone();
            }
        }
        let maps = Arc::new(procmaps::read(pid).unwrap_or_default());
        let now = Instant::now();
        if self.maps.len() >= PRUNE_AT && now.duration_since(self.pruned) >= PRUNE_EVERY {
            self.pruned = now;
            self.maps
                .retain(|_, (_, at)| now.duration_since(*at) < MAPS_TTL);
        }
        if self.maps.len() >= MAX_PROCESSES {
            self.maps.clear();
        }
        self.maps.insert(pid, (maps.clone(), now));
        maps
    }

    /// The module holding `addr` in `pid` and the address's ELF virtual address.
    fn resolve(
        &mut self,
        pid: u32,
        maps: &[Mapping],
        addr: u64,
    ) -> Option<(Rc<Module>, u64, String)> {
        let mapping = procmaps::find(maps, addr)?;
        let module = self.module(pid, mapping)?;
        let vaddr = module.vaddr_of_offset(mapping.file_offset(addr))?;
        Some((module, vaddr, mapping.path.clone()))
    }

    fn module(&mut self, pid: u32, mapping: &Mapping) -> Option<Rc<Module>> {
        let key = mapping.file_key();
        match self.modules.get(&key) {
            Lookup::Hit(m) => return Some(m),
            Lookup::Failed => return None,
            Lookup::Miss => {}
        }
        let root = PathBuf::from(format!("/proc/{pid}/root"));
        let mut last_error = None;
        for path in mapping.open_paths(pid) {
            match Module::load(&path, &mapping.path, &root, &self.config.debug_dirs) {
                Ok(m) => {
                    // The same build seen through another path: keep one copy.
                    let m = match m
                        .build_id
                        .as_deref()
                        .and_then(|id| self.modules.by_build_id(id))
                    {
                        Some(existing) => existing,
                        None => Rc::new(m),
                    };
                    tracing::debug!(path = %mapping.path, bytes = m.bytes, debug = ?m.debug_source, "loaded symbols");
                    self.modules.insert(key, m.clone());
                    return Some(m);
                }
                Err(e) => last_error = Some(e),
            }
        }
        self.load_errors += 1;
        if let Some(error) = last_error {
            tracing::debug!(%error, path = %mapping.path, "could not load a binary's symbols");
        }
        self.modules.insert_failed(key);
        None
    }

    /// Unwinds and symbolizes one stack.
    pub fn symbolize(&mut self, req: &StackRequest) -> StackTrace {
        let pid = req.key.tgid;
        let mut maps = self.maps_of(pid, false);
        if procmaps::find(&maps, req.regs.rip).is_none() {
            maps = self.maps_of(pid, true);
        }
        let mem = StackMemory {
            base: req.regs.rsp,
            bytes: &req.stack,
        };
        let cfi_pcs = unwind::unwind(req.regs, &mem, MAX_FRAMES, |pc| {
            match self.resolve(pid, &maps, pc) {
                Some((module, vaddr, _)) => match module.unwind_rule(&mut self.unwind_ctx, vaddr) {
                    Some(rule) => Step::Cfi(rule),
                    None => Step::FramePointer,
                },
                None => Step::Unknown,
            }
        });
        // The kernel's frame-pointer walk, cut at the first address in no executable mapping.
        let fp_len = req
            .ips
            .iter()
            .take_while(|&&ip| procmaps::find(&maps, ip).is_some())
            .count();
        let pcs: &[u64] = if fp_len > cfi_pcs.len() {
            &req.ips[..fp_len]
        } else {
            &cfi_pcs
        };

        let mut frames = Vec::with_capacity(pcs.len() + 4);
        for (i, &pc) in pcs.iter().enumerate() {
            let probe = if i == 0 { pc } else { pc.saturating_sub(1) };
            match self.resolve(pid, &maps, probe) {
                Some((module, vaddr, path)) => {
                    let source = module.source_frames(vaddr);
                    if source.is_empty() {
                        frames.push(Frame {
                            function: None,
                            file: None,
                            line: None,
                            module_path: path.clone(),
                            inlined: false,
                        });
                    }
                    let n = source.len();
                    for (j, s) in source.into_iter().enumerate() {
                        frames.push(Frame {
                            function: s.function,
                            file: s.file,
                            line: s.line,
                            module_path: path.clone(),
                            inlined: j + 1 < n,
                        });
                    }
                }
                None => frames.push(Frame {
                    function: None,
                    file: None,
                    line: None,
                    module_path: format!("0x{pc:x}"),
                    inlined: false,
                }),
            }
            if frames.len() >= MAX_FRAMES {
                frames.truncate(MAX_FRAMES);
                break;
            }
        }
        StackTrace {
            frames,
            native_only: is_interpreter(pid),
        }
    }
}

fn is_interpreter(pid: u32) -> bool {
    let Ok(exe) = std::fs::read_link(format!("/proc/{pid}/exe")) else {
        return false;
    };
    let name = exe.file_name().and_then(|n| n.to_str()).unwrap_or("");
    INTERPRETERS.iter().any(|i| name.starts_with(i))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_of_a_stack() {
        let f = |function: &str, file: Option<&str>, line: Option<u32>, module: &str| Frame {
            function: Some(function.into()),
            file: file.map(Into::into),
            line,
            module_path: module.into(),
            inlined: false,
        };
        let trace = StackTrace {
            frames: vec![
                f(
                    "__GI___libc_write",
                    None,
                    None,
                    "/usr/lib/x86_64-linux-gnu/libc.so.6",
                ),
                f(
                    "fetch_orders",
                    Some("/src/client.c"),
                    Some(42),
                    "/tmp/client",
                ),
                f("main", Some("/src/client.c"), Some(60), "/tmp/client"),
            ],
            native_only: false,
        };
        let attrs = trace.attributes();
        let get = |k: &str| attrs.iter().find(|a| a.key == k).map(|a| a.value.clone());
        assert_eq!(
            get("code.stacktrace"),
            Some(AttrValue::Str(
                "__GI___libc_write (libc.so.6)\nfetch_orders (/src/client.c:42)\nmain (/src/client.c:60)".into()
            ))
        );
        assert_eq!(
            get("code.function.name"),
            Some(AttrValue::Str("fetch_orders".into()))
        );
        assert_eq!(
            get("code.file.path"),
            Some(AttrValue::Str("/src/client.c".into()))
        );
        assert_eq!(get("code.line.number"), Some(AttrValue::Int(42)));
        assert_eq!(get("ztrace.stack"), None);
        assert!(StackTrace::default().attributes().is_empty());
    }

    /// Unwinds this very thread: its registers and stack copied the way the kernel does,
    /// symbolized through /proc/self/maps and this test binary's CFI and DWARF.
    #[test]
    #[inline(never)]
    fn unwinds_and_symbolizes_its_own_stack() {
        let (rip, rsp, rbp): (u64, u64, u64);
        // SAFETY: reads three registers; no memory is touched.
        unsafe {
            std::arch::asm!("lea {0}, [rip]", "mov {1}, rsp", "mov {2}, rbp", out(reg) rip, out(reg) rsp, out(reg) rbp);
        }
        // Up to 16 KiB above rsp, page by page as the kernel copies, stopping at the stack's end.
        let mem = std::fs::File::open("/proc/self/mem").expect("open /proc/self/mem");
        let mut stack = Vec::new();
        let mut at = rsp;
        while stack.len() < 16 * 1024 {
            let mut page = vec![0u8; (4096 - (at & 4095)) as usize];
            match std::os::unix::fs::FileExt::read_at(&mem, &mut page, at) {
                Ok(n) if n == page.len() => stack.extend_from_slice(&page),
                _ => break,
            }
            at += page.len() as u64;
        }
        let req = StackRequest {
            key: ConnKey {
                tgid: std::process::id(),
                fd: 3,
                conn_gen: 1,
            },
            ts_ns: 1,
            regs: Regs { rip, rsp, rbp },
            ips: vec![rip],
            stack,
            stream: None,
        };
        let mut s = Symbolizer::new(SymbolizerConfig {
            debug_dirs: vec![],
            max_bytes: 1 << 30,
        });
        let trace = s.symbolize(&req);
        let names: Vec<String> = trace.frames.iter().map(Frame::render).collect();
        assert!(
            names[0].contains("unwinds_and_symbolizes_its_own_stack"),
            "{names:#?}"
        );
        assert!(
            trace.frames.len() > 3,
            "the unwinder walked past the test function: {names:#?}"
        );
        assert!(
            names.iter().any(|n| n.contains("test::run_test")),
            "{names:#?}"
        );
        let (_, misses) = s.cache_stats();
        s.symbolize(&req);
        assert_eq!(
            s.cache_stats().1,
            misses,
            "a second stack of the same binary parses nothing again"
        );
        assert!(s.module_bytes() > 0);
    }
}
