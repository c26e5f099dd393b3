//! Client spans meet their stacks on their way to trace assembly. A stack is submitted when the
//! kernel sends it (at the request's first write), long before the response ends the span; a
//! span whose stack is still being symbolized is held for a bounded time ([`StackJoin::pass`])
//! and released with or without it (a release without is counted as `stacks_timed_out`).
//! A stack sent for an HTTP/2 stream (the goroutine that created a grpc-go client stream, see
//! `ebpf/src/go/grpc.rs`) goes to the span of that stream, whenever its request was written.

use std::{
    collections::VecDeque,
    sync::Arc,
    time::{Duration, Instant},
};

use super::{StackRequest, StackTrace, SymbolizerHandle};
use crate::{
    collections::HashMap, conn::ConnKey, metrics::Metrics, protocols::Side, spans::Span,
    trace::Finished,
};

/// Stacks kept per connection while their spans are not built.
const PER_CONN: usize = 16;
/// Connections with stacks kept at once.
const MAX_CONNS: usize = 65_536;
/// A connection's stacks untouched for this long are dropped: its spans were released long ago
/// (a held span waits a second at most), so nothing will take them.
const STALE: Duration = Duration::from_secs(60);
/// How often stale stacks are looked for.
const PRUNE_EVERY: Duration = Duration::from_secs(10);

/// A finished span waiting for its stack: the kernel time its exchange finished at, and when the
/// wait is over.
struct Held {
    at: u64,
    finished: Finished,
    deadline: Instant,
}

/// The (kernel time, stream) of requests whose stacks are being symbolized.
type Awaited = VecDeque<(u64, Option<u64>)>;

/// A symbolized stack: the time it was taken, the stream it was sent for, the stack.
type Ready = (u64, Option<u64>, Arc<StackTrace>);

/// Stacks in flight and ready, and the spans waiting for them.
pub struct StackJoin {
    handle: Option<SymbolizerHandle>,
    /// By connection: when a stack was last added, and the (kernel time, stream) of the requests
    /// whose stacks the symbolizer has not answered yet.
    pending: HashMap<ConnKey, (Instant, Awaited)>,
    /// By connection: when a stack was last added, and the symbolized stacks.
    ready: HashMap<ConnKey, (Instant, VecDeque<Ready>)>,
    held: VecDeque<Held>,
    wait: Duration,
    /// When stale connections were last dropped.
    pruned: Instant,
}

impl StackJoin {
    /// `handle` is `None` when stacks are off.
    pub fn new(handle: Option<SymbolizerHandle>, wait: Duration) -> Self {
        StackJoin {
            handle,
            pending: HashMap::default(),
            ready: HashMap::default(),
            held: VecDeque::new(),
            pruned: Instant::now(),
            wait,
        }
    }

    /// Sizes of its tables: connections with stacks on their way, with stacks ready, and client
    /// spans held for their stack.
    pub fn table_sizes(&self) -> [(&'static str, usize); 3] {
        [
            ("stacks_pending_conns", self.pending.len()),
            ("stacks_ready_conns", self.ready.len()),
            ("stacks_held_spans", self.held.len()),
        ]
    }

    /// Hands a stack from the kernel to the symbolizer.
    pub fn submit(&mut self, req: StackRequest, metrics: &Metrics) {
        let Some(handle) = &self.handle else { return };
        let (key, ts, stream) = (req.key, req.ts_ns, req.stream);
        if handle.submit(req, metrics) {
            if self.pending.len() >= MAX_CONNS {
                self.pending.clear();
            }
            let (at, q) = self
                .pending
                .entry(key)
                .or_insert_with(|| (Instant::now(), VecDeque::new()));
            *at = Instant::now();
            if q.len() >= PER_CONN {
                q.pop_front();
            }
            q.push_back((ts, stream));
        }
    }

    /// Takes the symbolizer's finished stacks.
    pub fn poll(&mut self) {
        let Some(handle) = &self.handle else { return };
        let now = Instant::now();
        while let Ok(r) = handle.results.try_recv() {
            let mut awaited = false;
            if let Some((_, q)) = self.pending.get_mut(&r.key) {
                let before = q.len();
                q.retain(|&t| t != (r.ts_ns, r.stream));
                awaited = q.len() < before;
                if q.is_empty() {
                    self.pending.remove(&r.key);
                }
            }
            // A stack whose connection was forgotten meanwhile (closed, its spans gone by)
            // has no span to join: kept, it would stay for good.
            if !awaited && !self.held.iter().any(|h| h.finished.key == r.key) {
                continue;
            }
            if self.ready.len() >= MAX_CONNS {
                self.ready.clear();
            }
            let (at, q) = self
                .ready
                .entry(r.key)
                .or_insert_with(|| (now, VecDeque::new()));
            *at = now;
            if q.len() >= PER_CONN {
                q.pop_front();
            }
            q.push_back((r.ts_ns, r.stream, r.trace));
        }
        if now.duration_since(self.pruned) >= PRUNE_EVERY {
            self.pruned = now;
            self.pending
                .retain(|_, (at, _)| now.duration_since(*at) < STALE);
            self.ready
                .retain(|_, (at, _)| now.duration_since(*at) < STALE);
        }
    }

    /// Attaches the stack of the request that began at `ts_ns` on `key` (on `stream`, if
    /// multiplexed) to `span`: the stack sent for that stream, else the newest stack taken on
    /// that connection at or before it. False when that stack is still being symbolized.
    fn join(
        &mut self,
        span: &mut Span,
        key: ConnKey,
        ts_ns: u64,
        stream: Option<u64>,
        metrics: &Metrics,
    ) -> bool {
        if let Some((_, q)) = self.ready.get_mut(&key) {
            let found = match stream.and_then(|s| q.iter().position(|(_, st, _)| *st == Some(s))) {
                Some(i) => q.remove(i),
                None => match q.iter().rposition(|(t, st, _)| st.is_none() && *t <= ts_ns) {
                    Some(i) => {
                        let found = q.remove(i);
                        // Older stacks of requests without a stream are done with.
                        let mut k = 0;
                        q.retain(|(_, st, _)| {
                            k += 1;
                            st.is_some() || k > i
                        });
                        found
                    }
                    None => None,
                },
            };
            if q.is_empty() {
                self.ready.remove(&key);
            }
            if let Some((_, _, trace)) = found {
                span.attributes.extend(trace.attributes());
                Metrics::inc(&metrics.stacks_attached);
                return true;
            }
        }
        !self.pending.get(&key).is_some_and(|(_, q)| {
            q.iter().any(|&(t, st)| match (stream, st) {
                (Some(s), Some(st)) => s == st,
                (_, None) => t <= ts_ns,
                (None, Some(_)) => false,
            })
        })
    }

    /// A span on its way to trace assembly, finished at kernel time `at`: a client span gets the
    /// stack of its request (if one was captured) and goes on; one whose stack is still being
    /// symbolized is held (`None`) until [`release`](Self::release) lets it go.
    pub fn pass(
        &mut self,
        at: u64,
        mut finished: Finished,
        now: Instant,
        metrics: &Metrics,
    ) -> Option<(u64, Finished)> {
        if finished.side != Side::Client
            || self.join(
                &mut finished.span,
                finished.key,
                finished.request_start_ns,
                finished.stream,
                metrics,
            )
        {
            return Some((at, finished));
        }
        self.held.push_back(Held {
            at,
            finished,
            deadline: now + self.wait,
        });
        None
    }

    /// Held spans whose stack came, or whose wait is over (all of them with `all`).
    pub fn release(
        &mut self,
        now: Instant,
        all: bool,
        metrics: &Metrics,
        out: &mut Vec<(u64, Finished)>,
    ) {
        if self.held.is_empty() {
            return;
        }
        self.poll();
        let mut keep = VecDeque::with_capacity(self.held.len());
        while let Some(mut h) = self.held.pop_front() {
            let f = &mut h.finished;
            if self.join(&mut f.span, f.key, f.request_start_ns, f.stream, metrics) {
                out.push((h.at, h.finished));
            } else if all || now >= h.deadline {
                Metrics::inc(&metrics.stacks_timed_out);
                out.push((h.at, h.finished));
            } else {
                keep.push_back(h);
            }
        }
        self.held = keep;
    }

    /// The earliest kernel time a held span finished at: trace assembly must not pass it.
    pub fn oldest_held(&self) -> Option<u64> {
        self.held.iter().map(|h| h.at).min()
    }

    /// The connection closed: its stacks that no held span waits for are dropped, and those
    /// still being symbolized are not kept when they come.
    pub fn forget(&mut self, key: &ConnKey) {
        if !self.held.iter().any(|h| h.finished.key == *key) {
            self.ready.remove(key);
            self.pending.remove(key);
        }
    }
}
