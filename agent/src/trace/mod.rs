//! Trace assembly across processes: the CLIENT span of a local connection becomes the parent of
//! the SERVER span of the same exchange on the accepting side (`ztrace.link = connection`).
//!
//! Both ends of a connection on this host are seen as two connections with mirrored 4-tuples.
//! The server span usually finishes first (the server writes the response before the client has
//! read it), so a server span whose peer is a traced local process is held until the client span
//! of the same exchange arrives, or until [`HOLD`] passes (then it leaves unlinked). A client span
//! is kept briefly for a server span that arrives after it. Exchanges are matched in order on the
//! 4-tuple, and only when the server span lies within the client span.
//!
//! A span whose parent came from a `traceparent` header keeps it. Thread and goroutine links
//! inside a process are not made here yet.

use std::{
    collections::{HashMap, VecDeque},
    net::SocketAddr,
    time::{Duration, Instant},
};

use crate::{
    metrics::Metrics,
    spans::{AttrValue, Span},
};

/// Longest wait for the client span of a held server span.
pub const HOLD: Duration = Duration::from_secs(3);
/// How long a client span stays available to a later server span.
const REMEMBER: Duration = Duration::from_secs(3);
/// Most spans held at once; beyond that the oldest leave unlinked.
const MAX_HELD: usize = 16_384;
/// Most remembered client spans per connection.
const MAX_REMEMBERED_PER_CONN: usize = 64;

/// The attribute that says how a span's parent was found.
pub const LINK_ATTR: &str = "ztrace.link";

/// (client endpoint, server endpoint) of a connection.
type Tuple = (SocketAddr, SocketAddr);

struct Held {
    span: Span,
    deadline: Instant,
}

struct ClientRef {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    start: u64,
    end: u64,
    expires: Instant,
}

/// Joins client and server spans of local connections.
#[derive(Default)]
pub struct Linker {
    held: HashMap<Tuple, VecDeque<Held>>,
    held_count: usize,
    clients: HashMap<Tuple, VecDeque<ClientRef>>,
}

fn contains(client_start: u64, client_end: u64, server: &Span) -> bool {
    server.start_unix_nano >= client_start && server.end_unix_nano <= client_end
}

fn link_kind(span: &Span) -> Option<&str> {
    span.attributes.iter().find(|a| a.key == LINK_ATTR).and_then(|a| match &a.value {
        AttrValue::Str(s) => Some(s.as_str()),
        _ => None,
    })
}

fn set_link(span: &mut Span, kind: &str) {
    match span.attributes.iter_mut().find(|a| a.key == LINK_ATTR) {
        Some(a) => a.value = AttrValue::Str(kind.to_owned()),
        None => span.attributes.push(crate::spans::Attribute::new(LINK_ATTR, kind)),
    }
}

fn adopt(server: &mut Span, trace_id: [u8; 16], parent: [u8; 8]) {
    server.trace_id = trace_id;
    server.parent_span_id = Some(parent);
    set_link(server, "connection");
}

impl Linker {
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of server spans waiting for their client span.
    pub fn held(&self) -> usize {
        self.held_count
    }

    /// A client span finished on the connection `local → remote`. It leaves at once, with any
    /// held server span it is the parent of.
    pub fn on_client(&mut self, span: Span, local: SocketAddr, remote: SocketAddr, now: Instant, out: &mut Vec<Span>) {
        let tuple = (local, remote);
        if let Some(queue) = self.held.get_mut(&tuple) {
            if let Some(i) = queue.iter().position(|h| contains(span.start_unix_nano, span.end_unix_nano, &h.span)) {
                // Server spans before the match had no client span: they leave unlinked.
                for _ in 0..i {
                    if let Some(h) = queue.pop_front() {
                        out.push(h.span);
                    }
                }
                if let Some(mut h) = queue.pop_front() {
                    adopt(&mut h.span, span.trace_id, span.span_id);
                    self.held_count -= i + 1;
                    if queue.is_empty() {
                        self.held.remove(&tuple);
                    }
                    out.push(span);
                    out.push(h.span);
                    return;
                }
            }
        }
        let remembered = self.clients.entry(tuple).or_default();
        if remembered.len() >= MAX_REMEMBERED_PER_CONN {
            remembered.pop_front();
        }
        remembered.push_back(ClientRef {
            trace_id: span.trace_id,
            span_id: span.span_id,
            start: span.start_unix_nano,
            end: span.end_unix_nano,
            expires: now + REMEMBER,
        });
        out.push(span);
    }

    /// A server span finished on the connection `local ← remote`. `peer_traced` says whether the
    /// client end is a traced process on this host (so its span may still come).
    #[expect(clippy::too_many_arguments, reason = "each argument is a distinct fact of the one call site")]
    pub fn on_server(
        &mut self,
        mut span: Span,
        local: SocketAddr,
        remote: SocketAddr,
        peer_traced: bool,
        now: Instant,
        metrics: &Metrics,
        out: &mut Vec<Span>,
    ) {
        if link_kind(&span) == Some("header") {
            out.push(span);
            return;
        }
        let tuple = (remote, local);
        if let Some(remembered) = self.clients.get_mut(&tuple) {
            if let Some(i) = remembered.iter().position(|c| contains(c.start, c.end, &span)) {
                if let Some(c) = remembered.remove(i) {
                    // Earlier exchanges of this connection can no longer match.
                    remembered.drain(..i);
                    adopt(&mut span, c.trace_id, c.span_id);
                    out.push(span);
                    return;
                }
            }
        }
        if !peer_traced {
            out.push(span);
            return;
        }
        if self.held_count >= MAX_HELD {
            self.release_oldest(metrics, out);
        }
        self.held.entry(tuple).or_default().push_back(Held { span, deadline: now + HOLD });
        self.held_count += 1;
    }

    /// Releases held spans whose wait is over and forgets old client spans.
    pub fn expire(&mut self, now: Instant, metrics: &Metrics, out: &mut Vec<Span>) {
        let mut released = 0;
        self.held.retain(|_, queue| {
            while queue.front().is_some_and(|h| h.deadline <= now) {
                if let Some(h) = queue.pop_front() {
                    out.push(h.span);
                    released += 1;
                }
            }
            !queue.is_empty()
        });
        self.held_count -= released;
        Metrics::add(&metrics.spans_unlinked, released as u64);
        self.clients.retain(|_, remembered| {
            while remembered.front().is_some_and(|c| c.expires <= now) {
                remembered.pop_front();
            }
            !remembered.is_empty()
        });
    }

    /// Releases everything (at shutdown).
    pub fn flush(&mut self, out: &mut Vec<Span>) {
        for (_, queue) in self.held.drain() {
            out.extend(queue.into_iter().map(|h| h.span));
        }
        self.held_count = 0;
        self.clients.clear();
    }

    fn release_oldest(&mut self, metrics: &Metrics, out: &mut Vec<Span>) {
        let oldest = self
            .held
            .iter()
            .filter_map(|(t, q)| q.front().map(|h| (h.deadline, *t)))
            .min_by_key(|(d, _)| *d)
            .map(|(_, t)| t);
        if let Some(tuple) = oldest {
            if let Some(queue) = self.held.get_mut(&tuple) {
                if let Some(h) = queue.pop_front() {
                    out.push(h.span);
                    self.held_count -= 1;
                    Metrics::inc(&metrics.spans_unlinked);
                }
                if queue.is_empty() {
                    self.held.remove(&tuple);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::spans::{Attribute, Resource, SpanKind, StatusCode};

    fn span(kind: SpanKind, start: u64, end: u64, link: &str) -> Span {
        Span {
            trace_id: crate::spans::new_trace_id(),
            span_id: crate::spans::new_span_id(),
            parent_span_id: None,
            name: "GET /".into(),
            kind,
            start_unix_nano: start,
            end_unix_nano: end,
            status: StatusCode::Unset,
            status_message: None,
            attributes: vec![Attribute::new(LINK_ATTR, link)],
            resource: Arc::new(Resource { service_name: "s".into(), attributes: vec![] }),
        }
    }

    fn addrs() -> (SocketAddr, SocketAddr) {
        ("127.0.0.1:40000".parse().expect("addr"), "127.0.0.1:8000".parse().expect("addr"))
    }

    #[test]
    fn held_server_span_adopts_the_client_that_contains_it() {
        let (client, server) = addrs();
        let m = Metrics::default();
        let now = Instant::now();
        let mut linker = Linker::new();
        let mut out = Vec::new();
        linker.on_server(span(SpanKind::Server, 20, 30, "none"), server, client, true, now, &m, &mut out);
        assert!(out.is_empty(), "held for its client");
        assert_eq!(linker.held(), 1);
        let c = span(SpanKind::Client, 10, 40, "none");
        let (trace, id) = (c.trace_id, c.span_id);
        linker.on_client(c, client, server, now, &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(out[1].trace_id, trace);
        assert_eq!(out[1].parent_span_id, Some(id));
        assert_eq!(link_kind(&out[1]), Some("connection"));
        assert_eq!(linker.held(), 0);
    }

    #[test]
    fn client_first_then_server_links_too_and_order_is_kept() {
        let (client, server) = addrs();
        let m = Metrics::default();
        let now = Instant::now();
        let mut linker = Linker::new();
        let mut out = Vec::new();
        let c1 = span(SpanKind::Client, 10, 40, "none");
        let c2 = span(SpanKind::Client, 50, 80, "none");
        let (id1, id2) = (c1.span_id, c2.span_id);
        linker.on_client(c1, client, server, now, &mut out);
        linker.on_client(c2, client, server, now, &mut out);
        linker.on_server(span(SpanKind::Server, 55, 70, "none"), server, client, true, now, &m, &mut out);
        assert_eq!(out[2].parent_span_id, Some(id2), "matched by time, not by position");
        linker.on_server(span(SpanKind::Server, 15, 30, "none"), server, client, true, now, &m, &mut out);
        assert_eq!(out.len(), 3, "an earlier exchange cannot match after a later one: held");
        linker.expire(now + HOLD, &m, &mut out);
        assert_eq!(out.len(), 4);
        assert_ne!(out[3].parent_span_id, Some(id1));
        assert_eq!(out[3].parent_span_id, None);
    }

    #[test]
    fn unmatched_spans_leave_after_the_hold_and_are_counted() {
        let (client, server) = addrs();
        let m = Metrics::default();
        let now = Instant::now();
        let mut linker = Linker::new();
        let mut out = Vec::new();
        linker.on_server(span(SpanKind::Server, 20, 30, "none"), server, client, true, now, &m, &mut out);
        linker.expire(now + HOLD / 2, &m, &mut out);
        assert!(out.is_empty());
        linker.expire(now + HOLD, &m, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].parent_span_id, None);
        assert_eq!(m.spans_unlinked.load(std::sync::atomic::Ordering::Relaxed), 1);
    }

    #[test]
    fn header_links_and_remote_peers_are_never_held() {
        let (client, server) = addrs();
        let m = Metrics::default();
        let now = Instant::now();
        let mut linker = Linker::new();
        let mut out = Vec::new();
        linker.on_server(span(SpanKind::Server, 20, 30, "header"), server, client, true, now, &m, &mut out);
        linker.on_server(span(SpanKind::Server, 20, 30, "none"), server, client, false, now, &m, &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(linker.held(), 0);
    }

    #[test]
    fn a_client_span_that_does_not_contain_the_server_span_is_not_its_parent() {
        let (client, server) = addrs();
        let m = Metrics::default();
        let now = Instant::now();
        let mut linker = Linker::new();
        let mut out = Vec::new();
        linker.on_server(span(SpanKind::Server, 20, 30, "none"), server, client, true, now, &m, &mut out);
        linker.on_client(span(SpanKind::Client, 25, 40, "none"), client, server, now, &mut out);
        assert_eq!(out.len(), 1, "only the client span left");
        assert_eq!(linker.held(), 1);
    }
}
