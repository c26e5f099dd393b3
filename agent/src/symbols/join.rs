//! Client spans meet their stacks. A stack is submitted when the kernel sends it (at the
//! request's first write), long before the response ends the span; a span whose stack is
//! still being symbolized is held for a bounded time ([`StackJoin::hold`]) and released with
//! or without it (a release without is counted as `stacks_timed_out`).

use std::{
    collections::{HashMap, VecDeque},
    sync::Arc,
    time::{Duration, Instant},
};

use super::{StackRequest, StackTrace, SymbolizerHandle};
use crate::{conn::ConnKey, metrics::Metrics, spans::Span};

/// Stacks kept per connection while their spans are not built.
const PER_CONN: usize = 16;
/// Connections with stacks kept at once.
const MAX_CONNS: usize = 65_536;

/// A span waiting for its stack, with what the caller needs to send it on.
struct Held<T> {
    span: Span,
    extra: T,
    key: ConnKey,
    ts_ns: u64,
    deadline: Instant,
}

/// Stacks in flight and ready, and the spans waiting for them.
pub struct StackJoin<T> {
    handle: Option<SymbolizerHandle>,
    pending: HashMap<ConnKey, VecDeque<u64>>,
    ready: HashMap<ConnKey, VecDeque<(u64, Arc<StackTrace>)>>,
    held: VecDeque<Held<T>>,
    wait: Duration,
}

/// What to do with a span.
pub enum Joined {
    /// Send it on (with its stack's attributes, if one was captured).
    Ready(Span),
    /// Its stack is being symbolized: hold it.
    Wait(Span),
}

impl<T> StackJoin<T> {
    /// `handle` is `None` when stacks are off.
    pub fn new(handle: Option<SymbolizerHandle>, wait: Duration) -> Self {
        StackJoin { handle, pending: HashMap::new(), ready: HashMap::new(), held: VecDeque::new(), wait }
    }

    /// Hands a stack from the kernel to the symbolizer.
    pub fn submit(&mut self, req: StackRequest, metrics: &Metrics) {
        let Some(handle) = &self.handle else { return };
        let (key, ts) = (req.key, req.ts_ns);
        if handle.submit(req, metrics) {
            if self.pending.len() >= MAX_CONNS {
                self.pending.clear();
            }
            let q = self.pending.entry(key).or_default();
            if q.len() >= PER_CONN {
                q.pop_front();
            }
            q.push_back(ts);
        }
    }

    /// Takes the symbolizer's finished stacks.
    pub fn poll(&mut self) {
        let Some(handle) = &self.handle else { return };
        while let Ok(r) = handle.results.try_recv() {
            if let Some(q) = self.pending.get_mut(&r.key) {
                q.retain(|&t| t != r.ts_ns);
                if q.is_empty() {
                    self.pending.remove(&r.key);
                }
            }
            if self.ready.len() >= MAX_CONNS {
                self.ready.clear();
            }
            let q = self.ready.entry(r.key).or_default();
            if q.len() >= PER_CONN {
                q.pop_front();
            }
            q.push_back((r.ts_ns, r.trace));
        }
    }

    /// Attaches the stack of the request that began at `ts_ns` on `key`: the newest stack taken
    /// on that connection at or before it.
    pub fn join(&mut self, mut span: Span, key: ConnKey, ts_ns: u64, metrics: &Metrics) -> Joined {
        if let Some(q) = self.ready.get_mut(&key) {
            if let Some(i) = q.iter().rposition(|(t, _)| *t <= ts_ns) {
                let (_, trace) = q[i].clone();
                q.drain(..=i);
                if q.is_empty() {
                    self.ready.remove(&key);
                }
                span.attributes.extend(trace.attributes());
                Metrics::inc(&metrics.stacks_attached);
                return Joined::Ready(span);
            }
        }
        if self.pending.get(&key).is_some_and(|q| q.iter().any(|&t| t <= ts_ns)) {
            return Joined::Wait(span);
        }
        Joined::Ready(span)
    }

    /// Holds a span until its stack is ready or the wait is over.
    pub fn hold(&mut self, span: Span, extra: T, key: ConnKey, ts_ns: u64, now: Instant) {
        self.held.push_back(Held { span, extra, key, ts_ns, deadline: now + self.wait });
    }

    /// Spans whose stack came, or whose wait is over (all of them with `all`).
    pub fn release(&mut self, now: Instant, all: bool, metrics: &Metrics, out: &mut Vec<(Span, T)>) {
        if self.held.is_empty() {
            return;
        }
        self.poll();
        let mut keep = VecDeque::with_capacity(self.held.len());
        while let Some(h) = self.held.pop_front() {
            match self.join(h.span, h.key, h.ts_ns, metrics) {
                Joined::Ready(span) => out.push((span, h.extra)),
                Joined::Wait(span) if all || now >= h.deadline => {
                    Metrics::inc(&metrics.stacks_timed_out);
                    out.push((span, h.extra));
                }
                Joined::Wait(span) => keep.push_back(Held { span, ..h }),
            }
        }
        self.held = keep;
    }

    /// What the held spans carry, to see how far back they reach.
    pub fn held(&self) -> impl Iterator<Item = &T> {
        self.held.iter().map(|h| &h.extra)
    }

    /// The connection closed: its stacks that no held span waits for are dropped.
    pub fn forget(&mut self, key: &ConnKey) {
        if !self.held.iter().any(|h| h.key == *key) {
            self.ready.remove(key);
        }
    }
}
