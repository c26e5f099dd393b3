//! The capture task: kernel events → connections → exchanges → spans → trace assembly → sinks,
//! inline on one task (each stage is cheap and never blocks). Client spans wait here, at most
//! [`STACK_WAIT`], for the stack of their request.

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use aya::maps::{MapData, RingBuf};

use crate::{
    bpf::{self, events::KernelEvent},
    conn::{self, ConnExchange, ConnKey, ConnTable},
    discovery::{go::GoDiscovery, ProcessCache},
    metrics::Metrics,
    protocols::Options,
    sinks::Sinks,
    spans::{self, clock::Clock, Span},
    symbols::{join::StackJoin, unwind::Regs, StackRequest},
    tls::TlsDiscovery,
    trace::{self, Finished, Tracer},
};

/// Connections idle for this long are dropped (their process died without closing them).
const IDLE_CONN_NS: u64 = 10 * 60 * 1_000_000_000;
/// Connections idle for this long are checked for a process that exited without closing them.
const EXIT_CHECK_IDLE_NS: u64 = 1_000_000_000;
/// Most connections tracked at once.
const MAX_CONNS: usize = 65_536;
/// Interpreter processes remembered as already told to the kernel (see `Capture::stackless`).
const MAX_STACKLESS: usize = 16_384;
/// Ring-buffer records handled before the capture task hands spans on and yields.
const MAX_RECORDS_PER_DRAIN: usize = 65_536;
/// Records handled between two releases of the hold-back window within one drain.
const RELEASE_EVERY: usize = 4_096;
/// Longest a client span waits for its stack to be symbolized (the first stack of a large
/// binary loads its DWARF). Trace assembly waits for held spans, so this also bounds how long
/// a stack can delay other spans.
pub const STACK_WAIT: Duration = Duration::from_secs(1);

/// The event-handling state of the capture task.
pub struct Capture {
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
    pub tls: TlsDiscovery,
    pub go: GoDiscovery,
    /// Client spans and the stacks of their requests.
    stacks: StackJoin,
    released: Vec<(u64, Finished)>,
    /// Processes of interpreted runtimes seen since the last [`Capture::take_stackless`]: their
    /// stacks show the interpreter's own frames only, so the kernel is told to take none.
    stackless: Vec<u32>,
    /// Processes already told to the kernel as stackless (at most [`MAX_STACKLESS`], then
    /// forgotten: telling again is harmless).
    stackless_told: crate::collections::HashSet<u32>,
}

impl Capture {
    /// Connections to `addr`, where the agent listens (the viewer), are its own traffic: their
    /// client side is not traced.
    pub fn ignore_clients_of(&mut self, addr: SocketAddr) {
        self.conns.ignore_clients_of(addr);
    }

    /// The Kubernetes node the agent runs on (see `ProcessCache::set_node_name`).
    pub fn set_node_name(&mut self, node: Option<String>) {
        self.processes.set_node_name(node);
    }

    /// Where pod labels and annotations come from (see `ProcessCache::set_pod_source`).
    pub fn set_pod_source(&mut self, source: crate::discovery::cri::PodSource) {
        self.processes.set_pod_source(source);
    }

    pub fn new(
        metrics: Arc<Metrics>,
        db_query_parameters: bool,
        tls: TlsDiscovery,
        stacks: StackJoin,
        go: GoDiscovery,
    ) -> Self {
        Capture {
            metrics,
            conns: ConnTable::new(MAX_CONNS, std::process::id()).with_options(Options {
                db_query_parameters,
            }),
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
            stackless: Vec::new(),
            stackless_told: Default::default(),
        }
    }

    /// Entries in each of the agent's own tables, by name (for `/metrics` and `ztrace stats`).
    pub fn table_sizes(&self) -> Vec<(&'static str, u64)> {
        let mut sizes = vec![
            ("connections", self.conns.len()),
            ("processes", self.processes.len()),
            ("stackless_told", self.stackless_told.len()),
        ];
        sizes.extend(self.tls.table_sizes());
        sizes.extend(self.go.table_sizes());
        sizes.extend(self.tracer.table_sizes());
        sizes.extend(self.stacks.table_sizes());
        sizes
            .into_iter()
            .map(|(name, n)| (name, n as u64))
            .collect()
    }

    /// Processes whose stacks cannot name their code, seen since the last call (see
    /// [`crate::discovery::cmdline::Runtime::stacks_name_code`]).
    pub fn take_stackless(&mut self) -> Vec<u32> {
        std::mem::take(&mut self.stackless)
    }

    /// Handles the records in the ring buffer.
    ///
    /// At most [`MAX_RECORDS_PER_DRAIN`] records per call, so that under a steady flood the task
    /// still hands spans to the sinks, expires held spans and hears signals; the next poll goes on.
    ///
    /// The hold-back window is released as the records go, not only once the ring is empty: a
    /// record not read yet was written after the one just read, so (calls being shorter than the
    /// window, the window's own premise) nothing older than the window before the last record's
    /// time can still come. When the agent falls behind (a burst, a slow start), the window so
    /// keeps to its width instead of growing with the backlog until it overflows.
    pub fn drain(&mut self, ring: &mut RingBuf<MapData>, sinks: &mut Sinks) {
        // Everything the kernel timestamped before this instant and finished is in the ring now.
        let began = u64::try_from(spans::clock::monotonic_now_ns()).unwrap_or(0);
        let mut budget = MAX_RECORDS_PER_DRAIN;
        let mut emptied = true;
        self.stacks.poll();
        while let Some(item) = ring.next() {
            budget -= 1;
            self.on_record(&item);
            drop(item);
            if budget == 0 {
                emptied = false;
                break;
            }
            if budget.is_multiple_of(RELEASE_EVERY) {
                self.release(self.last_ts.saturating_sub(trace::WINDOW_NS), sinks);
            }
        }
        let complete_to = if emptied {
            began.max(self.last_ts)
        } else {
            self.last_ts
        };
        self.release(complete_to.saturating_sub(trace::WINDOW_NS), sinks);
    }

    /// Hands on every span whose inputs are all older than `watermark` (kernel time): through
    /// trace assembly, to the sinks.
    pub fn release(&mut self, mut watermark: u64, sinks: &mut Sinks) {
        self.release_stacked(false);
        // Spans held for their stack finished at `at`: assembly must not pass them.
        if let Some(oldest) = self.stacks.oldest_held() {
            watermark = watermark.min(oldest.saturating_sub(1));
        }
        self.tracer
            .release(watermark, &self.metrics, &mut self.ready);
        sinks.send_all(&mut self.ready);
    }

    /// Handles one ring-buffer record: decodes it and moves it through the connection table,
    /// the parsers and trace assembly (finished spans collect in `ready`).
    pub fn on_record(&mut self, item: &[u8]) {
        Metrics::inc(&self.metrics.events_read);
        let mut ts = 0;
        match bpf::events::decode(item) {
            Ok(KernelEvent::Conn(ev)) => {
                self.last_ts = ev.header.ts_ns;
                self.conns.on_conn(&ev, &self.metrics);
                // Read the process's identity now, while it surely runs: a short-lived
                // client may be gone (or a zombie without cmdline) when its span is built.
                if ev.header.tgid != self.own_tgid {
                    let info = self
                        .processes
                        .refresh(ev.header.tgid, &conn::comm_string(&ev.comm));
                    if !crate::discovery::cmdline::stacks_name_code(&info.exe_name) {
                        if self.stackless_told.len() >= MAX_STACKLESS {
                            self.stackless_told.clear();
                        }
                        if self.stackless_told.insert(ev.header.tgid) {
                            self.stackless.push(ev.header.tgid);
                        }
                    }
                    if self.tls.on_conn(ev.header.tgid) {
                        Metrics::add(&self.metrics.tls_forks_not_read, 1);
                    }
                    self.go.on_conn(ev.header.tgid);
                }
            }
            Ok(KernelEvent::Data {
                header,
                prefix,
                tail,
            }) => {
                ts = header.header.ts_ns;
                self.last_ts = ts;
                self.processes.on_activity(header.header.tgid);
                self.conns
                    .on_data(&header, prefix, tail, &self.metrics, &mut self.exchanges);
                for start in self.conns.take_starts().collect::<Vec<_>>() {
                    let peer_traced = self.conns.peer_traced(start.local, start.remote);
                    self.tracer
                        .start(start, peer_traced, &self.metrics, &mut self.ready);
                }
            }
            Ok(KernelEvent::Close(header)) => {
                ts = header.ts_ns;
                self.last_ts = ts;
                self.conns
                    .on_close(&header, &self.metrics, &mut self.exchanges);
                let key = ConnKey {
                    tgid: header.tgid,
                    fd: header.fd,
                    conn_gen: header.conn_gen,
                };
                self.tracer.closed(ts, key, &self.metrics, &mut self.ready);
                if !self.exchanges.is_empty() {
                    self.make_spans(ts);
                }
                self.stacks.forget(&key);
            }
            Ok(KernelEvent::Stack { header, stack }) => {
                let h = &header.header;
                let req = StackRequest {
                    key: ConnKey {
                        tgid: h.tgid,
                        fd: h.fd,
                        conn_gen: h.conn_gen,
                    },
                    ts_ns: h.ts_ns,
                    regs: Regs {
                        rip: header.rip,
                        rsp: header.rsp,
                        rbp: header.rbp,
                    },
                    ips: header.ips[..header.ips_len as usize].to_vec(),
                    stack: stack.to_vec(),
                    stream: (header.stream != 0).then_some(header.stream),
                };
                self.stacks.submit(req, &self.metrics);
            }
            Ok(KernelEvent::GoSpawn(ev)) => {
                ts = ev.header.ts_ns;
                self.last_ts = ts;
                let stream_handler = self.go.starts_stream_handler(ev.header.tgid, ev.caller_pc);
                self.tracer.spawned_by_site(
                    ts,
                    ev.header.tgid,
                    ev.parent_goid as u32,
                    ev.child_goid as u32,
                    stream_handler,
                    &self.metrics,
                    &mut self.ready,
                );
            }
            Ok(KernelEvent::GoStream(ev)) => {
                // Stamped with NewStream's entry: older than the records around it.
                self.tracer.stream_created(
                    ev.header.ts_ns,
                    ev.header.tgid,
                    ev.header.fd,
                    ev.stream_id,
                    ev.goid as u32,
                    &self.metrics,
                    &mut self.ready,
                );
            }
            Ok(KernelEvent::Exec(header)) => {
                self.tls.on_exec(header.tgid);
                self.go.on_exec(header.tgid);
                // The kernel forgot it with the old program: tell it again if the new one is an interpreter.
                self.stackless_told.remove(&header.tgid);
            }
            Err(error) => {
                Metrics::inc(&self.metrics.events_malformed);
                tracing::debug!(%error, "malformed kernel event");
            }
        }
        if !self.exchanges.is_empty() {
            self.make_spans(ts);
        }
    }

    /// Turns finished exchanges into spans and hands them to trace assembly, which gives them
    /// their ids and parents; spans ready for the sinks collect in `ready`.
    fn make_spans(&mut self, ts: u64) {
        for ex in self.exchanges.drain(..) {
            let process = self.processes.get_or_load(ex.conn.key.tgid, &ex.conn.comm);
            let span = ex
                .exchange
                .span(&ex.conn.endpoints(), &process.resource, &self.clock);
            let (side, request_start_ns) = (ex.exchange.side(), ex.exchange.request_start_ns());
            let consumer_tid = ex.exchange.consumer_thread();
            Metrics::inc(&self.metrics.spans_created);
            let peer_traced = self.conns.peer_traced(ex.conn.local, ex.conn.remote);
            // An exchange finished on a close has no data event: its close is its time.
            let at = if ts == 0 { self.last_ts } else { ts };
            let finished = Finished {
                span,
                key: ex.conn.key,
                side,
                request_start_ns,
                peer_traced,
                consumer_tid,
                stream: ex.exchange.stream(),
            };
            // A delivered message was read, not requested: no stack of a request is its own.
            if consumer_tid.is_some() {
                self.tracer
                    .finished(at, finished, &self.metrics, &mut self.ready);
                continue;
            }
            // Client spans take their request's stack (or wait for it) on the way.
            if let Some((at, finished)) =
                self.stacks
                    .pass(at, finished, Instant::now(), &self.metrics)
            {
                self.tracer
                    .finished(at, finished, &self.metrics, &mut self.ready);
            }
        }
    }

    /// Client spans whose stack came (or whose wait is over) go on to trace assembly.
    fn release_stacked(&mut self, all: bool) {
        self.stacks
            .release(Instant::now(), all, &self.metrics, &mut self.released);
        for (at, finished) in self.released.drain(..) {
            self.tracer
                .finished(at, finished, &self.metrics, &mut self.ready);
        }
    }

    pub fn housekeeping(&mut self, sinks: &mut Sinks) {
        if self.last_ts > IDLE_CONN_NS {
            self.conns.sweep(self.last_ts - IDLE_CONN_NS, &self.metrics);
        }
        // Processes that exited without closing their sockets (killed): their requests still
        // waiting are closed now, so that they are spans (issue 19).
        let now = u64::try_from(spans::clock::monotonic_now_ns()).unwrap_or(self.last_ts);
        let closed = self.conns.close_exited(
            now.saturating_sub(EXIT_CHECK_IDLE_NS),
            now,
            process_alive,
            &self.metrics,
            &mut self.exchanges,
        );
        for key in closed {
            self.tracer.closed(now, key, &self.metrics, &mut self.ready);
            self.stacks.forget(&key);
        }
        if !self.exchanges.is_empty() {
            self.make_spans(now);
        }
        // Stacks that came while idle, and stale ones dropped.
        self.stacks.poll();
        self.release_stacked(false);
        self.tracer.expire();
        sinks.send_all(&mut self.ready);
    }

    /// Releases every held span (at shutdown).
    pub fn flush(&mut self, sinks: &mut Sinks) {
        self.release_stacked(true);
        self.tracer.flush(&self.metrics, &mut self.ready);
        sinks.send_all(&mut self.ready);
    }
}

/// Whether process `tgid` still exists. (A zombie not yet reaped counts as alive: its leader
/// may be the one exited thread of a process that runs on.)
fn process_alive(tgid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{tgid}")).exists()
}
