//! The one place where the stages meet: kernel events → connections → exchanges → spans → sinks.
//!
//! One task reads the ring buffer and runs the connection table, the parsers and the span
//! builder inline (they are cheap and never block); finished spans go to each sink through a
//! bounded queue (`try_send`, counted when full), so a slow sink never slows capture.

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        mpsc, Arc,
    },
    time::{Duration, Instant},
};

use aya::maps::{MapData, RingBuf};
use tokio::signal::unix::SignalKind;

use crate::{
    bpf::{self, attach, events::KernelEvent, BpfError, EventRing, Selection, StackCapture},
    config::{Config, PrintArg},
    conn::{self, ConnExchange, ConnKey, ConnTable},
    discovery::{go::GoDiscovery, ProcessCache},
    export::{self, ExportError, ExportHandle},
    metrics::Metrics,
    print::{PrintFormat, Printer},
    spans::{self, clock::Clock, Span},
    protocols::{self, Side},
    store::StoreSink,
    symbols::{
        self,
        join::{Joined, StackJoin},
        unwind::Regs,
        StackRequest, SymbolizerConfig,
    },
    tls::{Row, TlsDiscovery},
    trace::{self, Finished, Tracer},
    ui,
};

/// Why the agent stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Bpf(#[from] BpfError),
    #[error("OTLP export: {0}")]
    Export(#[from] ExportError),
    #[error("reading kernel events: {0}")]
    Io(#[from] std::io::Error),
    #[error("--capture-bytes must be between 64 and {max}", max = ztrace_common::MAX_CAPTURE)]
    CaptureBytes,
    #[error("--stack-bytes must be at most {max}", max = ztrace_common::MAX_STACK_BYTES)]
    StackBytes,
}

/// Connections idle for this long are dropped (their process died without closing them).
const IDLE_CONN_NS: u64 = 10 * 60 * 1_000_000_000;
/// Most connections tracked at once.
const MAX_CONNS: usize = 65_536;
/// Ring-buffer records handled before the capture task hands spans on and yields.
const MAX_RECORDS_PER_DRAIN: usize = 65_536;
/// How often the ring buffer is drained when the kernel does not wake the agent.
const POLL_INTERVAL: Duration = Duration::from_millis(10);
/// Batches of spans waiting for the print thread (one batch per ring-buffer drain).
const PRINT_QUEUE: usize = 256;
/// Spans waiting for the print thread, over all batches: the memory bound of a slow stdout
/// (about 1 KiB a span). Beyond it batches are dropped and counted.
const PRINT_QUEUE_SPANS: usize = 32_768;
/// How often the processes of probed TLS files are checked (see `TlsDiscovery::reap`).
const TLS_REAP_INTERVAL: Duration = Duration::from_secs(1);
/// Longest a client span waits for its stack to be symbolized (the first stack of a large
/// binary loads its DWARF). Trace assembly waits for held spans, so this also bounds how long
/// a stack can delay other spans.
const STACK_WAIT: Duration = Duration::from_secs(1);

/// Runs the agent until SIGINT or SIGTERM.
pub async fn run(config: Config) -> Result<(), PipelineError> {
    if !(64..=ztrace_common::MAX_CAPTURE).contains(&config.capture_bytes) {
        return Err(PipelineError::CaptureBytes);
    }
    if config.stack_bytes > ztrace_common::MAX_STACK_BYTES {
        return Err(PipelineError::StackBytes);
    }
    let stacks_on = config.stacks == "on";
    bpf::check_can_start()?;
    let metrics = Arc::new(Metrics::default());
    let exporter = match export::OtlpConfig::from_config(&config)? {
        Some(otlp) => {
            tracing::info!(endpoint = %otlp.endpoint, protocol = ?otlp.protocol, "exporting spans over OTLP");
            Some(export::spawn(otlp, metrics.clone())?)
        }
        None => None,
    };
    let printer = config.print.map(|p| {
        let format = match p {
            PrintArg::Text => PrintFormat::Text,
            PrintArg::Json => PrintFormat::Json,
        };
        PrintSink::start(format)
    });

    // The store and the viewer (unless --no-ui); a failure of either is logged inside.
    let mut viewer = if config.no_ui { None } else { Some(ui::start(&config, metrics.clone()).await) };

    let selection = Selection { pids: config.pids.clone(), exe_names: config.exe_names.clone() };
    let stack_capture = StackCapture {
        enabled: stacks_on,
        stack_bytes: config.stack_bytes,
        per_second: config.stacks_per_second,
        burst: config.stacks_per_second.saturating_mul(2),
    };
    let (mut probes, ring) = bpf::start(config.capture_bytes, &selection, stack_capture)?;
    eprintln!("{}", attach::render(&probes.attached));
    if !probes.required_ok() {
        return Err(BpfError::RequiredHooks.into());
    }
    let mut tls = TlsDiscovery::new(std::process::id());
    tls.scan_at_start(&mut probes);
    eprintln!("{}", render_tls(&tls.rows));

    let mut sinks = Sinks {
        printer,
        exporter: exporter.as_ref().map(|(h, _)| h.clone()),
        store: viewer.as_mut().and_then(|v| v.store.take()),
        metrics: metrics.clone(),
    };
    // Go programs already running: follow their goroutines from the first request on.
    let mut go = GoDiscovery::new(stacks_on);
    for row in go.scan_at_start(std::process::id(), &mut probes) {
        eprintln!("  {}", row.line);
    }
    let symbolizer = stacks_on.then(|| {
        let mut debug_dirs = config.debug_dirs.clone();
        debug_dirs.push("/usr/lib/debug".into());
        let max_bytes = usize::try_from(config.symbol_cache_size).unwrap_or(usize::MAX);
        symbols::spawn(SymbolizerConfig { debug_dirs, max_bytes }, metrics.clone())
    });
    let mut capture =
        Capture::new(metrics.clone(), config.db_query_parameters, tls, StackJoin::new(symbolizer, STACK_WAIT), go);
    let mut ring = EventRing::new(ring)?;
    let mut sigterm = tokio::signal::unix::signal(SignalKind::terminate())?;
    let mut sigint = tokio::signal::unix::signal(SignalKind::interrupt())?;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut last_reap = Instant::now();
    // The kernel wakes the agent only when a backlog builds up; otherwise it is polled.
    let mut poll = tokio::time::interval(POLL_INTERVAL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    if let Some(addr) = viewer.as_ref().and_then(|v| v.addr) {
        eprintln!("viewer: http://{addr}");
    }
    eprintln!("ztrace is ready");
    tracing::info!("tracing every process on this host except ztrace itself");

    loop {
        tokio::select! {
            guard = ring.readable() => {
                let mut guard = guard?;
                // Clear first: records written while draining wake the next round.
                guard.clear_ready();
                capture.drain(guard.get_inner_mut(), &mut sinks);
            }
            _ = poll.tick() => capture.drain(ring.ring_mut(), &mut sinks),
            _ = tick.tick() => capture.housekeeping(&mut sinks),
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
        }
        // New programs and processes: probe their TLS libraries (once per file).
        if capture.tls.has_pending() {
            for row in capture.tls.run_pending(&mut probes) {
                tracing::info!("tls: {row} (found in pid {})", row.pid);
            }
        }
        // Files whose processes all exited: their probes go.
        if last_reap.elapsed() >= TLS_REAP_INTERVAL {
            last_reap = Instant::now();
            for line in capture.tls.reap(&mut probes, last_reap, config.tls_detach_after) {
                tracing::info!("tls: {line}");
            }
            // Exited Go programs stop being followed (their pid may be reused).
            capture.go.reap(&mut probes);
        }
        // ... and whether they are Go programs, whose goroutines are followed.
        if capture.go.has_pending() {
            for row in capture.go.run_pending(&mut probes) {
                tracing::info!("go: {} (found in pid {})", row.line, row.pid);
            }
        }
    }

    // Stop: take what the kernel already wrote, then flush the sinks.
    for _ in 0..64 {
        capture.drain(ring.ring_mut(), &mut sinks);
    }
    capture.flush(&mut sinks);
    let kernel = probes.kernel_counters();
    drop(probes);
    let Sinks { printer, exporter: export_handle, store, .. } = sinks;
    if let Some(p) = printer {
        p.finish();
    }
    if let Some(s) = store {
        s.finish();
    }
    drop(export_handle);
    if let Some((handle, task)) = exporter {
        handle.shutdown();
        if tokio::time::timeout(Duration::from_secs(10), task).await.is_err() {
            tracing::warn!("OTLP export did not finish flushing within 10 s; pending spans dropped");
        }
    }
    eprintln!("ztrace stats: {}", stats_json(&metrics, &kernel));
    Ok(())
}

/// The event-handling state of the capture task.
struct Capture {
    metrics: Arc<Metrics>,
    conns: ConnTable,
    processes: ProcessCache,
    clock: Clock,
    exchanges: Vec<ConnExchange>,
    tracer: Tracer,
    /// Spans ready for the sinks.
    ready: Vec<Span>,
    last_ts: u64,
    own_tgid: u32,
    /// TLS libraries found and processes to look at.
    tls: TlsDiscovery,
    go: GoDiscovery,
    /// Client spans and the stacks of their requests.
    stacks: StackJoin<HeldMeta>,
    released: Vec<(Span, HeldMeta)>,
}

/// What a client span held for its stack needs to go on to trace assembly.
struct HeldMeta {
    /// Kernel time of the event that finished its exchange.
    at: u64,
    side: Side,
    key: ConnKey,
    request_start_ns: u64,
    peer_traced: bool,
}

impl Capture {
    fn new(
        metrics: Arc<Metrics>,
        db_query_parameters: bool,
        tls: TlsDiscovery,
        stacks: StackJoin<HeldMeta>,
        go: GoDiscovery,
    ) -> Self {
        Capture {
            metrics,
            conns: ConnTable::new(MAX_CONNS, std::process::id())
                .with_options(protocols::Options { db_query_parameters }),
            processes: ProcessCache::new(),
            clock: Clock::now_from_system(),
            exchanges: Vec::new(),
            tracer: Tracer::new(),
            ready: Vec::new(),
            last_ts: 0,
            own_tgid: std::process::id(),
            tls,
            go,
            stacks,
            released: Vec::new(),
        }
    }

    /// Handles the records in the ring buffer.
    ///
    /// At most [`MAX_RECORDS_PER_DRAIN`] records per call, so that under a steady flood the task
    /// still hands spans to the sinks, expires held spans and hears signals; the next poll goes on.
    fn drain(&mut self, ring: &mut RingBuf<MapData>, sinks: &mut Sinks) {
        // Everything the kernel timestamped before this instant and finished is in the ring now.
        let began = u64::try_from(spans::clock::monotonic_now_ns()).unwrap_or(0);
        let mut budget = MAX_RECORDS_PER_DRAIN;
        let mut emptied = true;
        self.stacks.poll();
        while let Some(item) = ring.next() {
            budget -= 1;
            Metrics::inc(&self.metrics.events_read);
            let mut ts = 0;
            match bpf::events::decode(&item) {
                Ok(KernelEvent::Conn(ev)) => {
                    self.last_ts = ev.header.ts_ns;
                    self.conns.on_conn(&ev, &self.metrics);
                    // Read the process's identity now, while it surely runs: a short-lived
                    // client may be gone (or a zombie without cmdline) when its span is built.
                    if ev.header.tgid != self.own_tgid {
                        self.processes.refresh(ev.header.tgid, &conn::comm_string(&ev.comm));
                        self.tls.on_conn(ev.header.tgid);
                        self.go.on_conn(ev.header.tgid);
                    }
                }
                Ok(KernelEvent::Data { header, prefix, tail }) => {
                    ts = header.header.ts_ns;
                    self.last_ts = ts;
                    self.conns.on_data(&header, prefix, tail, &self.metrics, &mut self.exchanges);
                    for start in self.conns.take_starts().collect::<Vec<_>>() {
                        let peer_traced = self.conns.peer_traced(start.local, start.remote);
                        self.tracer.start(start, peer_traced, &self.metrics, &mut self.ready);
                    }
                }
                Ok(KernelEvent::Close(header)) => {
                    ts = header.ts_ns;
                    self.last_ts = ts;
                    self.conns.on_close(&header, &self.metrics, &mut self.exchanges);
                    let key = ConnKey { tgid: header.tgid, fd: header.fd, conn_gen: header.conn_gen };
                    self.tracer.closed(ts, key, &self.metrics, &mut self.ready);
                    if !self.exchanges.is_empty() {
                        self.make_spans(ts);
                    }
                    self.stacks.forget(&key);
                }
                Ok(KernelEvent::Stack { header, stack }) => {
                    let h = &header.header;
                    let req = StackRequest {
                        key: ConnKey { tgid: h.tgid, fd: h.fd, conn_gen: h.conn_gen },
                        ts_ns: h.ts_ns,
                        regs: Regs { rip: header.rip, rsp: header.rsp, rbp: header.rbp },
                        ips: header.ips[..header.ips_len as usize].to_vec(),
                        stack: stack.to_vec(),
                    };
                    self.stacks.submit(req, &self.metrics);
                }
                Ok(KernelEvent::GoSpawn(ev)) => {
                    ts = ev.header.ts_ns;
                    self.last_ts = ts;
                    self.tracer.spawned(ts, ev.header.tgid, ev.parent_goid as u32, ev.child_goid as u32, &self.metrics, &mut self.ready);
                }
                Ok(KernelEvent::Exec(header)) => {
                    self.tls.on_exec(header.tgid);
                    self.go.on_exec(header.tgid);
                }
                Err(error) => {
                    Metrics::inc(&self.metrics.events_malformed);
                    tracing::debug!(%error, "malformed kernel event");
                }
            }
            drop(item);
            if !self.exchanges.is_empty() {
                self.make_spans(ts);
            }
            if budget == 0 {
                emptied = false;
                break;
            }
        }
        self.release_stacked(false);
        if emptied {
            // Spans held for their stack finished at `at`: assembly must not pass them.
            let mut watermark = began.saturating_sub(trace::WINDOW_NS);
            if let Some(oldest) = self.stacks.held().map(|m| m.at).min() {
                watermark = watermark.min(oldest.saturating_sub(1));
            }
            self.tracer.release(watermark, &self.metrics, &mut self.ready);
        }
        sinks.send_all(&mut self.ready);
    }

    /// Turns finished exchanges into spans and hands them to trace assembly, which gives them
    /// their ids and parents; spans ready for the sinks collect in `ready`.
    fn make_spans(&mut self, ts: u64) {
        for ex in self.exchanges.drain(..) {
            let process = self.processes.get_or_load(ex.conn.key.tgid, &ex.conn.comm);
            let span = ex.exchange.to_span(&ex.conn.endpoints(), &process.resource, &self.clock);
            let (side, request_start_ns) = (ex.exchange.side(), ex.exchange.request_start_ns());
            Metrics::inc(&self.metrics.spans_created);
            let peer_traced = self.conns.peer_traced(ex.conn.local, ex.conn.remote);
            // An exchange finished on a close has no data event: its close is its time.
            let at = if ts == 0 { self.last_ts } else { ts };
            let span = if side == Side::Client {
                match self.stacks.join(span, ex.conn.key, request_start_ns, &self.metrics) {
                    Joined::Ready(span) => span,
                    Joined::Wait(span) => {
                        let meta = HeldMeta { at, side, key: ex.conn.key, request_start_ns, peer_traced };
                        self.stacks.hold(span, meta, ex.conn.key, request_start_ns, Instant::now());
                        continue;
                    }
                }
            } else {
                span
            };
            let finished = Finished { span, key: ex.conn.key, side, request_start_ns, peer_traced };
            self.tracer.finished(at, finished, &self.metrics, &mut self.ready);
        }
    }

    /// Client spans whose stack came (or whose wait is over) go on to trace assembly.
    fn release_stacked(&mut self, all: bool) {
        self.stacks.release(Instant::now(), all, &self.metrics, &mut self.released);
        for (span, m) in std::mem::take(&mut self.released) {
            let finished = Finished { span, key: m.key, side: m.side, request_start_ns: m.request_start_ns, peer_traced: m.peer_traced };
            self.tracer.finished(m.at, finished, &self.metrics, &mut self.ready);
        }
    }

    fn housekeeping(&mut self, sinks: &mut Sinks) {
        if self.last_ts > IDLE_CONN_NS {
            self.conns.sweep(self.last_ts - IDLE_CONN_NS, &self.metrics);
        }
        self.release_stacked(false);
        self.tracer.expire();
        sinks.send_all(&mut self.ready);
    }

    /// Releases every held span (at shutdown).
    fn flush(&mut self, sinks: &mut Sinks) {
        self.release_stacked(true);
        self.tracer.flush(&self.metrics, &mut self.ready);
        sinks.send_all(&mut self.ready);
    }
}

/// Where finished spans go.
struct Sinks {
    printer: Option<PrintSink>,
    exporter: Option<ExportHandle>,
    store: Option<StoreSink>,
    metrics: Arc<Metrics>,
}

impl Sinks {
    /// Hands every span of `spans` to each sink (the print thread gets them as one batch).
    fn send_all(&mut self, spans: &mut Vec<Span>) {
        if spans.is_empty() {
            return;
        }
        // Each sink owns its spans; the last one takes the originals instead of a copy.
        let per_span_sinks = self.store.is_some() || self.exporter.is_some();
        if let Some(p) = &self.printer {
            let batch = if per_span_sinks { spans.clone() } else { std::mem::take(spans) };
            p.send(batch, &self.metrics);
        }
        let now = Instant::now();
        for span in spans.drain(..) {
            let stored = match &mut self.store {
                Some(s) => s.admit(&span.trace_id, now, &self.metrics),
                None => false,
            };
            match (&self.store, &self.exporter) {
                (Some(s), Some(e)) if stored => {
                    s.send(span.clone(), &self.metrics);
                    e.send(span);
                }
                (Some(s), None) if stored => s.send(span, &self.metrics),
                (_, Some(e)) => e.send(span),
                _ => {}
            }
        }
    }
}

/// `--print`: a thread writing spans to stdout, so a slow terminal or pipe never blocks capture.
struct PrintSink {
    tx: mpsc::SyncSender<Vec<Span>>,
    thread: std::thread::JoinHandle<()>,
    /// Spans sent and not yet printed.
    queued: Arc<AtomicUsize>,
}

impl PrintSink {
    fn start(format: PrintFormat) -> Self {
        let (tx, rx) = mpsc::sync_channel::<Vec<Span>>(PRINT_QUEUE);
        let queued = Arc::new(AtomicUsize::new(0));
        let printed = queued.clone();
        let thread = std::thread::spawn(move || {
            let mut printer = Printer::new(std::io::stdout().lock(), format);
            // Print what is queued, flush when the queue is empty: one write per burst.
            let print_all = |printer: &mut Printer<_>, batch: Vec<Span>| {
                let result = batch.iter().try_for_each(|s| printer.print(s));
                printed.fetch_sub(batch.len(), Ordering::Relaxed);
                result
            };
            while let Ok(batch) = rx.recv() {
                let mut result = print_all(&mut printer, batch);
                while let (Ok(()), Ok(batch)) = (&result, rx.try_recv()) {
                    result = print_all(&mut printer, batch);
                }
                if result.and_then(|()| printer.flush()).is_err() {
                    break; // stdout closed: nothing more to print
                }
            }
        });
        PrintSink { tx, thread, queued }
    }

    fn send(&self, batch: Vec<Span>, metrics: &Metrics) {
        let n = batch.len();
        let queued = self.queued.load(Ordering::Relaxed);
        // One batch larger than the bound still goes when nothing waits.
        if queued > 0 && queued + n > PRINT_QUEUE_SPANS {
            Metrics::add(&metrics.spans_dropped_queue_full, n as u64);
            return;
        }
        self.queued.fetch_add(n, Ordering::Relaxed);
        if self.tx.try_send(batch).is_err() {
            self.queued.fetch_sub(n, Ordering::Relaxed);
            Metrics::add(&metrics.spans_dropped_queue_full, n as u64);
        }
    }

    fn finish(self) {
        drop(self.tx);
        let _ = self.thread.join();
    }
}

/// The TLS part of the attach table, as printed at start.
fn render_tls(rows: &[Row]) -> String {
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

/// The `ztrace stats:` line printed at exit: every userspace and kernel counter.
fn stats_json(metrics: &Metrics, kernel: &[(&'static str, u64)]) -> serde_json::Value {
    let mut map = serde_json::Map::new();
    for (name, value) in metrics.snapshot().into_iter().chain(kernel.iter().copied()) {
        map.insert(name.to_owned(), value.into());
    }
    serde_json::Value::Object(map)
}
