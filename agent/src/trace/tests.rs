//! Trace assembly on hand-made starts and spans: the orders → users chain, reordering inside
//! the hold-back window, keep-alive pairing, headers, event loops and what is counted.

use std::net::SocketAddr;

use super::*;
use crate::spans::{testing, Attribute, SpanKind};

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("addr")
}

fn key(tgid: u32, fd: i32) -> ConnKey {
    ConnKey {
        tgid,
        fd,
        conn_gen: 1,
    }
}

fn span(kind: SpanKind, name: &str) -> Span {
    Span {
        trace_id: new_trace_id(),
        span_id: new_span_id(),
        kind,
        start_unix_nano: 0,
        end_unix_nano: 0,
        attributes: vec![Attribute::new(LINK_ATTR, "none")],
        ..testing::span(name, &testing::resource("s", 1))
    }
}

/// One end of a connection: who (tgid, fd), its side, and its addresses.
#[derive(Clone, Copy)]
struct End {
    key: ConnKey,
    side: Side,
    local: SocketAddr,
    remote: SocketAddr,
}

/// A local connection: (client end, server end).
fn conn(
    client_tgid: u32,
    client_fd: i32,
    server_tgid: u32,
    server_fd: i32,
    client_port: u16,
    server_port: u16,
) -> (End, End) {
    let c = addr(&format!("127.0.0.1:{client_port}"));
    let s = addr(&format!("127.0.0.1:{server_port}"));
    (
        End {
            key: key(client_tgid, client_fd),
            side: Side::Client,
            local: c,
            remote: s,
        },
        End {
            key: key(server_tgid, server_fd),
            side: Side::Server,
            local: s,
            remote: c,
        },
    )
}

struct World {
    tracer: Tracer,
    metrics: Metrics,
    out: Vec<Span>,
}

impl World {
    fn new() -> Self {
        World {
            tracer: Tracer::new(),
            metrics: Metrics::default(),
            out: Vec::new(),
        }
    }
    fn start(&mut self, end: End, tid: u32, ts: u64) {
        self.start_tp(end, tid, ts, None);
    }
    fn start_tp(
        &mut self,
        end: End,
        tid: u32,
        ts: u64,
        traceparent: Option<super::context::TraceParent>,
    ) {
        let s = RequestStart {
            key: end.key,
            side: end.side,
            local: end.local,
            remote: end.remote,
            tid,
            goid: 0,
            ts_ns: ts,
            traceparent,
            born: None,
            stream: None,
        };
        self.tracer.start(s, true, &self.metrics, &mut self.out);
    }
    fn start_go(&mut self, end: End, tid: u32, goid: u32, ts: u64) {
        let s = RequestStart {
            key: end.key,
            side: end.side,
            local: end.local,
            remote: end.remote,
            tid,
            goid,
            ts_ns: ts,
            traceparent: None,
            born: None,
            stream: None,
        };
        self.tracer.start(s, true, &self.metrics, &mut self.out);
    }
    fn done(&mut self, end: End, name: &str, request_start: u64, ts: u64) {
        let kind = if end.side == Side::Server {
            SpanKind::Server
        } else {
            SpanKind::Client
        };
        let f = Finished {
            span: span(kind, name),
            key: end.key,
            side: end.side,
            request_start_ns: request_start,
            peer_traced: true,
            consumer_tid: None,
            stream: None,
        };
        self.tracer.finished(ts, f, &self.metrics, &mut self.out);
    }
    /// A request of a multiplexed protocol opening `stream` (its first bytes at `ts`).
    fn start_stream(&mut self, end: End, tid: u32, goid: u32, ts: u64, stream: u64) {
        let s = RequestStart {
            key: end.key,
            side: end.side,
            local: end.local,
            remote: end.remote,
            tid,
            goid,
            ts_ns: ts,
            traceparent: None,
            born: None,
            stream: Some(stream),
        };
        self.tracer.start(s, true, &self.metrics, &mut self.out);
    }
    fn done_stream(&mut self, end: End, name: &str, request_start: u64, ts: u64, stream: u64) {
        let kind = if end.side == Side::Server {
            SpanKind::Server
        } else {
            SpanKind::Client
        };
        let f = Finished {
            span: span(kind, name),
            key: end.key,
            side: end.side,
            request_start_ns: request_start,
            peer_traced: true,
            consumer_tid: None,
            stream: Some(stream),
        };
        self.tracer.finished(ts, f, &self.metrics, &mut self.out);
    }
    fn flush(&mut self) -> Vec<Span> {
        self.tracer.flush(&self.metrics, &mut self.out);
        std::mem::take(&mut self.out)
    }
}

fn by_name<'a>(spans: &'a [Span], name: &str) -> &'a Span {
    spans
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no span {name}"))
}

fn link(span: &Span) -> &str {
    link_of(span).unwrap_or("?")
}

#[test]
fn a_chain_of_calls_is_one_trace_even_with_reordered_inputs() {
    // edge → orders (tid 11) → users (tid 21) → postgres backend (tgid 30).
    let (_, orders_in) = conn(1, 3, 10, 5, 40000, 8081);
    let (orders_out, users_in) = conn(10, 6, 20, 5, 40001, 8082);
    let (users_out, backend) = conn(20, 7, 30, 9, 40002, 5432);
    let mut w = World::new();
    // In ring order the server's read of a request may come before the client's write of it;
    // timestamps put them right.
    w.start(orders_in, 11, 100);
    w.start(users_in, 21, 210);
    w.start(orders_out, 11, 200);
    w.start(backend, 30, 310);
    w.start(users_out, 21, 300);
    w.done(backend, "backend", 310, 320);
    w.done(users_out, "users query", 300, 330);
    w.done(users_in, "users server", 210, 340);
    w.done(orders_out, "orders call", 200, 350);
    w.done(orders_in, "orders server", 100, 400);
    assert!(w.out.is_empty(), "nothing leaves before the window is over");
    let spans = w.flush();
    assert_eq!(spans.len(), 5);
    let root = by_name(&spans, "orders server");
    assert_eq!((root.parent_span_id, link(root)), (None, "none"));
    let chain = [
        "orders server",
        "orders call",
        "users server",
        "users query",
        "backend",
    ];
    for pair in chain.windows(2) {
        let (parent, child) = (by_name(&spans, pair[0]), by_name(&spans, pair[1]));
        assert_eq!(
            child.parent_span_id,
            Some(parent.span_id),
            "{} under {}",
            pair[1],
            pair[0]
        );
        assert_eq!(child.trace_id, root.trace_id);
    }
    assert_eq!(link(by_name(&spans, "orders call")), "thread");
    assert_eq!(link(by_name(&spans, "users server")), "connection");
    assert_eq!(link(by_name(&spans, "backend")), "connection");
    assert_eq!(
        w.metrics
            .spans_unlinked
            .load(std::sync::atomic::Ordering::Relaxed),
        1,
        "the root's client was traced"
    );
}

#[test]
fn release_waits_for_the_window() {
    let (c, s) = conn(1, 3, 2, 4, 40000, 80);
    let mut w = World::new();
    w.start(c, 1, 1_000);
    w.done(c, "client", 1_000, 2_000);
    w.tracer.release(1_500, &w.metrics, &mut w.out);
    assert!(w.out.is_empty());
    w.tracer.release(2_000, &w.metrics, &mut w.out);
    assert_eq!(w.out.len(), 1);
    assert_eq!(w.tracer.pending(), 0);
    let _ = s;
}

#[test]
fn keep_alive_exchanges_pair_in_order() {
    let (c, s) = conn(1, 3, 2, 4, 40000, 80);
    let mut w = World::new();
    for (i, t) in [100u64, 200, 300].into_iter().enumerate() {
        w.start(c, 1, t);
        w.start(s, 2, t + 5);
        w.done(s, &format!("server {i}"), t + 5, t + 10);
        w.done(c, &format!("client {i}"), t, t + 20);
    }
    let spans = w.flush();
    for i in 0..3 {
        let (client, server) = (
            by_name(&spans, &format!("client {i}")),
            by_name(&spans, &format!("server {i}")),
        );
        assert_eq!(server.parent_span_id, Some(client.span_id));
        assert_eq!(server.trace_id, client.trace_id);
    }
}

#[test]
fn a_thread_serving_two_requests_links_nothing_and_a_finished_one_links_nothing() {
    let (_, a) = conn(1, 3, 10, 5, 40000, 80);
    let (_, b) = conn(2, 3, 10, 6, 40001, 80);
    let (out1, _) = conn(10, 7, 30, 9, 40002, 5432);
    let (out2, _) = conn(10, 8, 30, 9, 40003, 5432);
    let mut w = World::new();
    w.start(a, 11, 100);
    w.start(b, 11, 110); // an event loop: two open exchanges on thread 11
    w.start(out1, 11, 120);
    w.done(out1, "ambiguous", 120, 130);
    w.done(a, "a", 100, 140);
    w.done(b, "b", 110, 150);
    w.start(out2, 11, 160); // nothing open any more
    w.done(out2, "after", 160, 170);
    let spans = w.flush();
    for name in ["ambiguous", "after"] {
        let s = by_name(&spans, name);
        assert_eq!((s.parent_span_id, link(s)), (None, "none"), "{name}");
    }
}

#[test]
fn a_traceparent_wins_and_spans_are_never_duplicated() {
    let (c, s) = conn(1, 3, 2, 4, 40000, 80);
    let (out, _) = conn(2, 5, 3, 6, 40001, 81);
    let tp = super::context::parse_traceparent(
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    )
    .expect("tp");
    let mut w = World::new();
    w.start_tp(c, 1, 100, Some(tp));
    w.start_tp(s, 2, 110, Some(tp));
    w.start(out, 2, 120);
    w.done(out, "downstream", 120, 130);
    w.done(s, "server", 110, 140);
    w.done(c, "client", 100, 150);
    w.done(c, "second", 100, 160); // a second exchange of one start gets ids of its own
    let spans = w.flush();
    let server = by_name(&spans, "server");
    assert_eq!(
        (server.trace_id, server.parent_span_id, link(server)),
        (tp.trace_id, Some(tp.parent_id), "header")
    );
    let client = by_name(&spans, "client");
    assert_eq!((client.trace_id, link(client)), (tp.trace_id, "header"));
    let downstream = by_name(&spans, "downstream");
    assert_eq!(
        (downstream.trace_id, downstream.parent_span_id),
        (tp.trace_id, Some(server.span_id))
    );
    let ids: std::collections::HashSet<_> = spans.iter().map(|s| s.span_id).collect();
    assert_eq!(ids.len(), spans.len(), "every span id once");
}

#[test]
fn a_server_whose_traced_client_is_missing_is_a_counted_root() {
    let (_, s) = conn(1, 3, 2, 4, 40000, 80);
    let mut w = World::new();
    w.start(s, 2, 100);
    w.done(s, "server", 100, 120);
    let spans = w.flush();
    assert_eq!((spans[0].parent_span_id, link(&spans[0])), (None, "none"));
    assert_eq!(
        w.metrics
            .spans_unlinked
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

#[test]
fn the_pending_inputs_are_bounded() {
    let (c, _) = conn(1, 3, 2, 4, 40000, 80);
    let mut w = World::new();
    for i in 0..(MAX_PENDING as u64 + 10) {
        w.start(c, 1, 1_000 + i);
    }
    assert_eq!(w.tracer.pending(), MAX_PENDING);
    assert_eq!(
        w.metrics
            .link_window_overflow
            .load(std::sync::atomic::Ordering::Relaxed),
        10
    );
    assert!(w
        .tracer
        .starts
        .get(&c.key)
        .is_some_and(|q| q.len() <= MAX_STARTS_PER_CONN));
}

#[test]
fn a_pipelined_batch_pairs_exchange_by_exchange() {
    let (c, s) = conn(1, 3, 2, 4, 40000, 5432);
    let mut w = World::new();
    w.start(c, 1, 100); // one write: three executions
    w.start(s, 2, 105); // one read
    for i in 0..3 {
        w.done(s, &format!("server {i}"), 105, 110 + i);
    }
    for i in 0..3 {
        w.done(c, &format!("client {i}"), 100, 120 + i);
    }
    let spans = w.flush();
    for i in 0..3 {
        let (client, server) = (
            by_name(&spans, &format!("client {i}")),
            by_name(&spans, &format!("server {i}")),
        );
        assert_eq!(server.parent_span_id, Some(client.span_id), "execution {i}");
        assert_eq!(server.trace_id, client.trace_id);
    }
    let ids: std::collections::HashSet<_> = spans.iter().map(|s| s.span_id).collect();
    assert_eq!(ids.len(), 6);
}

#[test]
fn a_batch_the_server_reads_in_two_reads_still_pairs_exchange_by_exchange() {
    let (c, s) = conn(1, 3, 2, 4, 40000, 6379);
    let mut w = World::new();
    w.start(c, 1, 100); // three commands written after one start (three writes, no read between)
    w.start(s, 2, 105); // the server reads the first one,
    w.done(s, "server 0", 105, 106); // answers it,
    w.start(s, 2, 107); // then reads the other two
    w.done(s, "server 1", 107, 108);
    w.done(s, "server 2", 107, 109);
    for i in 0..3 {
        w.done(c, &format!("client {i}"), 100, 120 + i);
    }
    let spans = w.flush();
    for i in 0..3 {
        let (client, server) = (
            by_name(&spans, &format!("client {i}")),
            by_name(&spans, &format!("server {i}")),
        );
        assert_eq!(server.parent_span_id, Some(client.span_id), "command {i}");
        assert_eq!(server.trace_id, client.trace_id);
        assert_eq!(link(server), "connection");
    }
}

#[test]
fn streams_pair_by_stream_however_each_end_batches_and_finishes_them() {
    // An HTTP/2 client writes streams 1 and 3 in one write and 5 in the next; the server reads
    // 1 alone and 3 and 5 together; both ends finish them in other orders.
    let (client, server) = conn(1, 3, 10, 5, 40000, 50051);
    let mut w = World::new();
    w.start_stream(client, 2, 0, 100, 1);
    w.start_stream(client, 2, 0, 100, 3);
    w.start_stream(client, 2, 0, 110, 5);
    w.start_stream(server, 12, 0, 120, 1);
    w.start_stream(server, 12, 0, 130, 3);
    w.start_stream(server, 12, 0, 130, 5);
    w.done_stream(server, "server 5", 130, 200, 5);
    w.done_stream(server, "server 1", 120, 210, 1);
    w.done_stream(server, "server 3", 130, 220, 3);
    w.done_stream(client, "client 3", 100, 300, 3);
    w.done_stream(client, "client 5", 110, 310, 5);
    w.done_stream(client, "client 1", 100, 320, 1);
    let spans = w.flush();
    assert_eq!(spans.len(), 6);
    for stream in [1, 3, 5] {
        let (c, s) = (
            by_name(&spans, &format!("client {stream}")),
            by_name(&spans, &format!("server {stream}")),
        );
        assert_eq!(s.parent_span_id, Some(c.span_id), "stream {stream}");
        assert_eq!(s.trace_id, c.trace_id, "stream {stream}");
        assert_eq!(link(s), "connection");
    }
    let ids: crate::collections::HashSet<[u8; 8]> = spans.iter().map(|s| s.span_id).collect();
    assert_eq!(ids.len(), 6, "every span its own id");
}

#[test]
fn a_server_stream_whose_client_stream_was_not_seen_is_a_counted_root() {
    let (client, server) = conn(1, 3, 10, 5, 40000, 50051);
    let mut w = World::new();
    w.start_stream(client, 2, 0, 100, 3);
    // Stream 1's write was lost; the server reads 1, then 3.
    w.start_stream(server, 12, 0, 120, 1);
    w.start_stream(server, 12, 0, 130, 3);
    w.done_stream(server, "server 1", 120, 200, 1);
    w.done_stream(server, "server 3", 130, 210, 3);
    w.done_stream(client, "client 3", 100, 300, 3);
    let spans = w.flush();
    let s1 = by_name(&spans, "server 1");
    assert_eq!((s1.parent_span_id, link(s1)), (None, "none"));
    let (c3, s3) = (by_name(&spans, "client 3"), by_name(&spans, "server 3"));
    assert_eq!(s3.parent_span_id, Some(c3.span_id));
    assert_eq!(
        w.metrics
            .spans_unlinked
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

#[test]
fn a_goroutine_reading_several_streams_hands_each_to_the_goroutine_it_starts_next() {
    // A Go gRPC server's reader goroutine 7 reads streams 3 and 1 in one read and starts a
    // handler for each, in stream order: 8 serves 1, 9 serves 3. A third goroutine it starts
    // serves nothing (a wrong parent is worse than none). Stream 5, read alone, hands over too.
    let (_, a_in) = conn(1, 3, 10, 5, 40000, 50051);
    let (b_out, _) = conn(10, 6, 20, 5, 40001, 5432);
    let mut w = World::new();
    w.start_stream(a_in, 12, 7, 100, 3);
    w.start_stream(a_in, 12, 7, 100, 1);
    w.tracer.spawned(101, 10, 7, 8, &w.metrics, &mut w.out);
    w.tracer.spawned(102, 10, 7, 9, &w.metrics, &mut w.out);
    w.tracer.spawned(103, 10, 7, 10, &w.metrics, &mut w.out);
    w.start_go(b_out, 13, 9, 110);
    w.done(b_out, "query of 3", 110, 120);
    w.start_go(b_out, 13, 8, 130);
    w.done(b_out, "query of 1", 130, 140);
    w.start_go(b_out, 13, 10, 150);
    w.done(b_out, "query of nothing", 150, 160);
    w.start_stream(a_in, 12, 7, 200, 5);
    w.tracer.spawned(201, 10, 7, 11, &w.metrics, &mut w.out);
    w.start_go(b_out, 13, 11, 210);
    w.done(b_out, "query of 5", 210, 220);
    w.done_stream(a_in, "server 1", 100, 300, 1);
    w.done_stream(a_in, "server 3", 100, 300, 3);
    w.done_stream(a_in, "server 5", 200, 300, 5);
    // A handler still running after its stream ended serves nothing.
    w.start_go(b_out, 13, 11, 310);
    w.done(b_out, "late query", 310, 320);
    let spans = w.flush();
    for n in [1, 3, 5] {
        let (s, q) = (
            by_name(&spans, &format!("server {n}")),
            by_name(&spans, &format!("query of {n}")),
        );
        assert_eq!(
            (q.parent_span_id, link(q)),
            (Some(s.span_id), "goroutine"),
            "{n}"
        );
        assert_eq!(q.trace_id, s.trace_id);
    }
    for name in ["query of nothing", "late query"] {
        let q = by_name(&spans, name);
        assert_eq!((q.parent_span_id, link(q)), (None, "none"), "{name}");
    }
}

#[test]
fn net_http_h2_handlers_started_by_the_serve_goroutine_take_the_streams_its_reader_read() {
    // net/http's HTTP/2 server: the serve goroutine 5 starts the frame reader 6; 6 reads
    // stream 1; 5 then starts a frame writer 9 (another `go` statement) and the handler 8 of
    // stream 1 (a stream-handler `go` statement). Only the handler serves stream 1.
    let (_, a_in) = conn(1, 3, 10, 5, 40000, 8443);
    let (b_out, _) = conn(10, 6, 20, 5, 40001, 5432);
    let mut w = World::new();
    w.tracer
        .spawned_by_site(50, 10, 5, 6, Some(false), &w.metrics, &mut w.out);
    w.start_stream(a_in, 12, 6, 100, 1);
    w.tracer
        .spawned_by_site(101, 10, 5, 9, Some(false), &w.metrics, &mut w.out);
    w.tracer
        .spawned_by_site(102, 10, 5, 8, Some(true), &w.metrics, &mut w.out);
    w.start_go(b_out, 13, 9, 110);
    w.done(b_out, "writer's query", 110, 120);
    w.start_go(b_out, 13, 8, 130);
    w.done(b_out, "handler's query", 130, 140);
    w.done_stream(a_in, "server 1", 100, 200, 1);
    let spans = w.flush();
    let (s, q) = (
        by_name(&spans, "server 1"),
        by_name(&spans, "handler's query"),
    );
    assert_eq!((q.parent_span_id, link(q)), (Some(s.span_id), "goroutine"));
    let other = by_name(&spans, "writer's query");
    assert_eq!((other.parent_span_id, link(other)), (None, "none"));
}

#[test]
fn streams_read_before_the_serving_goroutine_started_go_to_its_handlers() {
    // grpc-go: the connection goroutine 5 reads the preface and, in the same read, streams 1
    // and 3 (a client that sent its calls at once); it starts 6, which serves the streams and
    // starts their handlers 8 and 9 (stream-handler `go` statements).
    let (_, a_in) = conn(1, 3, 10, 5, 40000, 50051);
    let (b_out, _) = conn(10, 6, 20, 5, 40001, 5432);
    let mut w = World::new();
    w.start_stream(a_in, 12, 5, 100, 1);
    w.start_stream(a_in, 12, 5, 100, 3);
    w.tracer
        .spawned_by_site(101, 10, 5, 6, Some(false), &w.metrics, &mut w.out);
    w.tracer
        .spawned_by_site(102, 10, 6, 8, Some(true), &w.metrics, &mut w.out);
    w.tracer
        .spawned_by_site(103, 10, 6, 9, Some(true), &w.metrics, &mut w.out);
    w.start_go(b_out, 13, 9, 110);
    w.done(b_out, "query of 3", 110, 120);
    w.start_go(b_out, 13, 8, 130);
    w.done(b_out, "query of 1", 130, 140);
    w.done_stream(a_in, "server 1", 100, 200, 1);
    w.done_stream(a_in, "server 3", 100, 200, 3);
    let spans = w.flush();
    for n in [1, 3] {
        let (s, q) = (
            by_name(&spans, &format!("server {n}")),
            by_name(&spans, &format!("query of {n}")),
        );
        assert_eq!(
            (q.parent_span_id, link(q)),
            (Some(s.span_id), "goroutine"),
            "{n}"
        );
    }
}

#[test]
fn a_go_grpc_client_stream_written_by_the_writer_goroutine_belongs_to_its_creator() {
    // Server A: reader goroutine 7 reads streams 1 and 3; handlers 8 and 9 each create a
    // client stream on connection fd 6 (goroutines 9 then 8: ids 1 and 3); the connection's
    // writer goroutine 30 writes both. Each client stream is the child of its handler's server
    // stream, and B's server streams are the children of those client streams.
    let (_, a_in) = conn(1, 3, 10, 5, 40000, 50051);
    let (a_out, b_in) = conn(10, 6, 20, 5, 40001, 50052);
    let mut w = World::new();
    w.start_stream(a_in, 12, 7, 100, 1);
    w.start_stream(a_in, 12, 7, 100, 3);
    w.tracer.spawned(101, 10, 7, 8, &w.metrics, &mut w.out);
    w.tracer.spawned(102, 10, 7, 9, &w.metrics, &mut w.out);
    w.tracer
        .stream_created(110, 10, 6, 1, 9, &w.metrics, &mut w.out);
    w.tracer
        .stream_created(111, 10, 6, 3, 8, &w.metrics, &mut w.out);
    w.start_stream(a_out, 14, 30, 120, 1);
    w.start_stream(a_out, 14, 30, 120, 3);
    w.start_stream(b_in, 22, 40, 130, 1);
    w.start_stream(b_in, 22, 40, 130, 3);
    w.done_stream(b_in, "b 1", 130, 140, 1);
    w.done_stream(b_in, "b 3", 130, 140, 3);
    w.done_stream(a_out, "a out 1", 120, 150, 1);
    w.done_stream(a_out, "a out 3", 120, 150, 3);
    w.done_stream(a_in, "a 1", 100, 160, 1);
    w.done_stream(a_in, "a 3", 100, 160, 3);
    // A stream no creation was seen for keeps the writer goroutine, which serves nothing.
    w.start_stream(a_out, 14, 30, 200, 5);
    w.done_stream(a_out, "a out 5", 200, 210, 5);
    let spans = w.flush();
    for (out, server, b) in [("a out 1", "a 3", "b 1"), ("a out 3", "a 1", "b 3")] {
        let (o, s, b) = (
            by_name(&spans, out),
            by_name(&spans, server),
            by_name(&spans, b),
        );
        assert_eq!(
            (o.parent_span_id, link(o)),
            (Some(s.span_id), "goroutine"),
            "{out}"
        );
        assert_eq!(o.trace_id, s.trace_id, "{out}");
        assert_eq!(
            (b.parent_span_id, b.trace_id),
            (Some(o.span_id), o.trace_id),
            "{out}"
        );
    }
    let o5 = by_name(&spans, "a out 5");
    assert_eq!((o5.parent_span_id, link(o5)), (None, "none"));
    assert_eq!(
        w.metrics
            .go_stream_owners
            .load(std::sync::atomic::Ordering::Relaxed),
        2
    );
}

#[test]
fn in_go_the_goroutine_not_the_thread_is_the_unit_of_work() {
    let (_, a) = conn(1, 3, 10, 5, 40000, 80);
    let (_, b) = conn(2, 3, 10, 6, 40001, 80);
    let (db1, _) = conn(10, 7, 30, 9, 40002, 5432);
    let (db2, _) = conn(10, 8, 30, 9, 40003, 5432);
    let mut w = World::new();
    w.start_go(a, 100, 7, 100); // goroutine 7 reads request a on thread 100
    w.start_go(b, 100, 8, 110); // goroutine 8 reads request b on the same thread
    w.start_go(db1, 101, 7, 120); // goroutine 7 queries, now on thread 101
    w.start_go(db2, 100, 8, 125);
    w.done(db1, "query a", 120, 130);
    w.done(db2, "query b", 125, 135);
    w.done(a, "a", 100, 140);
    w.done(b, "b", 110, 150);
    let spans = w.flush();
    for (query, server) in [("query a", "a"), ("query b", "b")] {
        let (q, s) = (by_name(&spans, query), by_name(&spans, server));
        assert_eq!(
            (q.parent_span_id, link(q)),
            (Some(s.span_id), "goroutine"),
            "{query}"
        );
    }
}

#[test]
fn goroutines_a_handler_starts_join_its_request_but_not_its_next_one() {
    let (_, first) = conn(1, 3, 10, 5, 40000, 80);
    let (_, second) = conn(1, 4, 10, 5, 40001, 80);
    let (call, _) = conn(10, 7, 20, 9, 40002, 8082);
    let (late, _) = conn(10, 8, 20, 9, 40003, 8082);
    let (orphan, _) = conn(10, 9, 20, 9, 40004, 8082);
    let mut w = World::new();
    // The accept loop (goroutine 1) started the serve goroutine 7, which serves `first`...
    w.tracer.spawned(50, 10, 1, 7, &w.metrics, &mut w.out);
    w.start_go(first, 100, 7, 100);
    // ... and starts goroutine 20, which starts 21; 21 calls out.
    w.tracer.spawned(110, 10, 7, 20, &w.metrics, &mut w.out);
    w.tracer.spawned(115, 10, 20, 21, &w.metrics, &mut w.out);
    w.start_go(call, 101, 21, 120);
    w.done(call, "call", 120, 130);
    w.done(first, "first", 100, 140);
    // Goroutine 7 serves the next request; 20, started during the first, calls out late.
    w.start_go(second, 100, 7, 150);
    w.start_go(late, 102, 20, 160);
    w.done(late, "late", 160, 170);
    // A goroutine started by the accept loop, which serves nothing, links to nothing.
    w.tracer.spawned(175, 10, 1, 30, &w.metrics, &mut w.out);
    w.start_go(orphan, 103, 30, 180);
    w.done(orphan, "orphan", 180, 185);
    w.done(second, "second", 150, 190);
    let spans = w.flush();
    let (c, f) = (by_name(&spans, "call"), by_name(&spans, "first"));
    assert_eq!((c.parent_span_id, link(c)), (Some(f.span_id), "goroutine"));
    for name in ["late", "orphan"] {
        let s = by_name(&spans, name);
        assert_eq!((s.parent_span_id, link(s)), (None, "none"), "{name}");
    }
}

fn rss_kib() -> u64 {
    crate::health::own_status_kib("VmRSS").unwrap_or(0)
}

/// The memory of the hold-back window at its bound: [`MAX_PENDING`] inputs, half request
/// starts and half finished HTTP server spans with the attributes the agent gives them. A
/// measure, printed (`cargo xtask bench` runs it), not asserted.
#[test]
#[ignore = "a measure: cargo test --release -p ztrace --lib hold_back_window_memory -- --ignored --nocapture"]
fn hold_back_window_memory() {
    let resource = testing::resource("orders", 1);
    let before = rss_kib();
    let mut w = World::new();
    for i in 0..(MAX_PENDING as u64 / 2) {
        let (_, server) = conn(
            1,
            3,
            10,
            5 + (i % 1000) as i32,
            20_000 + (i % 40_000) as u16,
            8081,
        );
        w.start(server, 11, 1_000 + 2 * i);
        let mut s = span(SpanKind::Server, "GET /orders/{id}");
        s.resource = resource.clone();
        s.attributes.extend([
            Attribute::new("http.request.method", "GET"),
            Attribute::new("url.path", format!("/orders/{i}")),
            Attribute::new("http.route", "/orders/{id}"),
            Attribute::new("http.response.status_code", 200i64),
            Attribute::new("server.address", "127.0.0.1"),
            Attribute::new("server.port", 8081i64),
            Attribute::new("client.address", "127.0.0.1"),
            Attribute::new("client.port", 40_000i64),
            Attribute::new("network.protocol.version", "1.1"),
            Attribute::new("user_agent.original", "Go-http-client/1.1"),
        ]);
        let f = Finished {
            span: s,
            key: server.key,
            side: Side::Server,
            request_start_ns: 1_000 + 2 * i,
            peer_traced: true,
            consumer_tid: None,
            stream: None,
        };
        w.tracer.finished(1_001 + 2 * i, f, &w.metrics, &mut w.out);
    }
    let after = rss_kib();
    assert_eq!(w.tracer.pending(), MAX_PENDING);
    let grown = after.saturating_sub(before);
    println!(
        "hold-back window at its bound: {MAX_PENDING} inputs (half starts, half HTTP spans), RSS +{:.1} MiB ({} bytes per input)",
        grown as f64 / 1024.0,
        grown * 1024 / MAX_PENDING as u64
    );
}

#[test]
fn a_delivered_message_is_the_child_of_the_publish_that_sent_it() {
    // A handler (server exchange on thread 5 of process 1) publishes to a broker (process 9);
    // process 2 receives the message on its own connection to the broker.
    let (http_client, http_server) = conn(3, 3, 1, 4, 40000, 8080);
    let (publisher, _) = conn(1, 7, 9, 8, 40001, 4222);
    let (subscriber, _) = conn(2, 5, 9, 9, 40002, 4222);
    let mut w = World::new();
    w.start(http_client, 1, 100);
    w.start(http_server, 5, 105);
    w.start(publisher, 5, 110);
    let message = |kind, name: &str, key: i64| {
        let mut s = span(kind, name);
        s.attributes.push(Attribute::new(MESSAGE_KEY_ATTR, key));
        s
    };
    let finished = |end: End, span, at| Finished {
        span,
        key: end.key,
        side: Side::Client,
        request_start_ns: at,
        peer_traced: false,
        consumer_tid: None,
        stream: None,
    };
    w.tracer.finished(
        110,
        finished(
            publisher,
            message(SpanKind::Producer, "publish orders", 42),
            110,
        ),
        &w.metrics,
        &mut w.out,
    );
    w.tracer.finished(
        111,
        finished(
            publisher,
            message(SpanKind::Producer, "publish other", 43),
            110,
        ),
        &w.metrics,
        &mut w.out,
    );
    w.tracer.finished(
        120,
        finished(
            subscriber,
            message(SpanKind::Consumer, "receive orders", 42),
            120,
        ),
        &w.metrics,
        &mut w.out,
    );
    w.tracer.finished(
        121,
        finished(
            subscriber,
            message(SpanKind::Consumer, "receive unknown", 77),
            121,
        ),
        &w.metrics,
        &mut w.out,
    );
    w.done(http_server, "GET /order", 105, 130);
    let spans = w.flush();
    let (handler, publish, receive) = (
        by_name(&spans, "GET /order"),
        by_name(&spans, "publish orders"),
        by_name(&spans, "receive orders"),
    );
    assert_eq!(
        publish.parent_span_id,
        Some(handler.span_id),
        "the handler's thread published"
    );
    assert_eq!(link(publish), "thread");
    assert_eq!(receive.parent_span_id, Some(publish.span_id));
    assert_eq!(receive.trace_id, handler.trace_id, "one trace");
    assert_eq!(link(receive), "message");
    let unknown = by_name(&spans, "receive unknown");
    assert_eq!(
        (unknown.parent_span_id, link(unknown)),
        (None, "none"),
        "a message published by nobody seen"
    );
    assert!(
        spans
            .iter()
            .all(|s| s.attributes.iter().all(|a| a.key != MESSAGE_KEY_ATTR)),
        "the key is never exported"
    );
}

#[test]
fn a_message_read_before_its_producer_exchange_completed_is_still_its_child() {
    // Redis streams: the consumer's XREADGROUP returns the entry (120) before the producer reads
    // the id its XADD (sent at 110) returned (130), and the key needs that id.
    let (publisher, _) = conn(1, 7, 9, 8, 40001, 6379);
    let (subscriber, _) = conn(2, 5, 9, 9, 40002, 6379);
    let mut w = World::new();
    w.start(publisher, 7, 110);
    let message = |kind, name: &str| {
        let mut s = span(kind, name);
        s.attributes.push(Attribute::new(MESSAGE_KEY_ATTR, 42i64));
        s
    };
    let finished = |end: End, span, at, tid| Finished {
        span,
        key: end.key,
        side: Side::Client,
        request_start_ns: at,
        peer_traced: false,
        consumer_tid: tid,
        stream: None,
    };
    w.tracer.finished(
        120,
        finished(
            subscriber,
            message(SpanKind::Consumer, "receive orders"),
            120,
            Some(5),
        ),
        &w.metrics,
        &mut w.out,
    );
    w.tracer.finished(
        130,
        finished(
            publisher,
            message(SpanKind::Producer, "publish orders"),
            110,
            None,
        ),
        &w.metrics,
        &mut w.out,
    );
    let spans = w.flush();
    let (publish, receive) = (
        by_name(&spans, "publish orders"),
        by_name(&spans, "receive orders"),
    );
    assert_eq!(receive.parent_span_id, Some(publish.span_id));
    assert_eq!(link(receive), "message");
}

#[test]
fn the_calls_a_thread_makes_after_reading_a_message_are_its_processing() {
    let (subscriber, _) = conn(2, 5, 9, 9, 40002, 4222);
    let (http_client, http_server) = conn(2, 6, 3, 4, 40003, 8080);
    let mut w = World::new();
    let mut receive = span(SpanKind::Consumer, "receive orders");
    receive
        .attributes
        .push(Attribute::new(MESSAGE_KEY_ATTR, 7i64));
    let f = Finished {
        span: receive,
        key: subscriber.key,
        side: Side::Client,
        request_start_ns: 100,
        peer_traced: false,
        consumer_tid: Some(11),
        stream: None,
    };
    w.tracer.finished(100, f, &w.metrics, &mut w.out);
    w.start(http_client, 11, 110); // the reading thread calls a service
    w.start(http_server, 1, 115);
    w.done(http_server, "GET /stock", 115, 120);
    w.done(http_client, "GET /stock client", 110, 125);
    w.start(http_client, 12, 130); // another thread: not the message's processing
    w.done(http_client, "other thread", 130, 140);
    let spans = w.flush();
    let (receive, call) = (
        by_name(&spans, "receive orders"),
        by_name(&spans, "GET /stock client"),
    );
    assert_eq!(call.parent_span_id, Some(receive.span_id));
    assert_eq!(call.trace_id, receive.trace_id);
    assert_eq!(link(call), "thread");
    assert_eq!(
        by_name(&spans, "GET /stock").parent_span_id,
        Some(call.span_id)
    );
    assert_eq!(by_name(&spans, "other thread").parent_span_id, None);
}

#[test]
fn calls_after_messages_read_together_are_no_single_message_s_processing() {
    // A backlog: two deliveries in one read (the same read time), then two calls. Which call
    // handles which message is not known: neither is linked to either message. The next
    // message read alone is again its calls' parent.
    let (subscriber, _) = conn(2, 5, 9, 9, 40002, 4222);
    let (http_client, _) = conn(2, 6, 3, 4, 40003, 8080);
    let mut w = World::new();
    for (name, at, key) in [
        ("receive 1", 100, 1i64),
        ("receive 2", 100, 2),
        ("receive 3", 200, 3),
    ] {
        let mut receive = span(SpanKind::Consumer, name);
        receive
            .attributes
            .push(Attribute::new(MESSAGE_KEY_ATTR, key));
        let f = Finished {
            span: receive,
            key: subscriber.key,
            side: Side::Client,
            request_start_ns: at,
            peer_traced: false,
            consumer_tid: Some(11),
            stream: None,
        };
        w.tracer.finished(at, f, &w.metrics, &mut w.out);
        if at == 100 && key == 2 {
            w.start(http_client, 11, 110);
            w.done(http_client, "call 1", 110, 120);
            w.start(http_client, 11, 130);
            w.done(http_client, "call 2", 130, 140);
        }
    }
    w.start(http_client, 11, 210);
    w.done(http_client, "call 3", 210, 220);
    let spans = w.flush();
    for name in ["call 1", "call 2"] {
        assert_eq!(by_name(&spans, name).parent_span_id, None, "{name}");
    }
    assert_eq!(
        by_name(&spans, "call 3").parent_span_id,
        Some(by_name(&spans, "receive 3").span_id)
    );
}

#[test]
fn a_reply_read_by_a_thread_serving_a_request_leaves_its_calls_to_the_request() {
    let (caller, handler) = conn(3, 3, 1, 4, 40000, 8080);
    let (requester, _) = conn(1, 7, 9, 8, 40001, 4222);
    let (db, _) = conn(1, 8, 5, 8, 40005, 5432);
    let mut w = World::new();
    w.start(caller, 1, 100);
    w.start(handler, 5, 105);
    let reply = span(SpanKind::Consumer, "receive _INBOX");
    let f = Finished {
        span: reply,
        key: requester.key,
        side: Side::Client,
        request_start_ns: 110,
        peer_traced: false,
        consumer_tid: Some(5),
        stream: None,
    };
    w.tracer.finished(110, f, &w.metrics, &mut w.out);
    w.start(db, 5, 120);
    w.done(db, "SELECT", 120, 125);
    w.done(handler, "GET /order", 105, 130);
    let spans = w.flush();
    assert_eq!(
        by_name(&spans, "SELECT").parent_span_id,
        Some(by_name(&spans, "GET /order").span_id)
    );
}

/// The window hands inputs out in (timestamp, rank, arrival) order whatever the arrival order:
/// nearly sorted (the usual case), far back (a write blocked for long), ties and interleaved pops.
#[test]
fn window_releases_in_timestamp_order() {
    let mut window = Window::default();
    let mut seed = 0x2545_F491_4F6C_DD1Du64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut expected = Vec::new();
    let mut got = Vec::new();
    let mut late_seen = 0;
    for seq in 0..5_000u64 {
        let jitter = next() % 100;
        // Mostly close to the back; one in 50 lands thousands of steps back; some exact ties.
        let ts = 1_000_000
            + if seq % 50 == 7 {
                seq * 10 - 30_000.min(seq * 10)
            } else {
                seq * 10 + jitter / 10 * 10
            };
        let rank = (next() % 3) as u8;
        window.push(ts, rank, seq, Input::Close(key(1, seq as i32)));
        expected.push((ts, rank, seq));
        // The deque stays sorted without inserting in its middle: far-back keys wait aside.
        late_seen = late_seen.max(window.late.len());
        assert!(window
            .order
            .iter()
            .zip(window.order.iter().skip(1))
            .all(|(a, b)| a < b));
        if seq % 97 == 0 && seq * 10 > 40_000 {
            // Release everything below a watermark, as `release` does.
            let watermark = 1_000_000 + seq * 10 - 40_000;
            while let Some(p) = window.pop_through(watermark) {
                assert!(p.ts <= watermark);
                let Input::Close(k) = p.input else {
                    panic!("not the input pushed")
                };
                got.push((p.ts, k.fd as u64));
            }
        }
    }
    while let Some(p) = window.pop() {
        let Input::Close(k) = p.input else {
            panic!("not the input pushed")
        };
        got.push((p.ts, k.fd as u64));
    }
    expected.sort();
    let expected: Vec<(u64, u64)> = expected.iter().map(|&(ts, _, seq)| (ts, seq)).collect();
    assert_eq!(got.len(), expected.len());
    assert_eq!(got, expected, "inputs left the window out of order");
    assert!(
        late_seen > 0,
        "no key landed far back: the test no longer covers the heap"
    );
}

fn born(trace: u8, span: u8, parent: Option<u8>, from_wire: bool) -> super::context::BornIds {
    super::context::BornIds {
        trace_id: [trace; 16],
        span_id: [span; 8],
        parent_id: parent.map(|p| [p; 8]),
        from_wire,
    }
}

impl World {
    fn start_born(&mut self, end: End, tid: u32, ts: u64, born: super::context::BornIds) {
        let s = RequestStart {
            key: end.key,
            side: end.side,
            local: end.local,
            remote: end.remote,
            tid,
            goid: 0,
            ts_ns: ts,
            traceparent: None,
            born: Some(born),
            stream: None,
        };
        self.tracer.start(s, false, &self.metrics, &mut self.out);
    }
}

#[test]
fn kernel_born_ids_are_the_span_ids_and_a_remote_context_links_by_tcp_option() {
    // A server on this host whose client is on another host (the kernel read the TCP option:
    // trace 7, client span 8), calling a local service.
    let remote_in = End {
        key: key(10, 5),
        side: Side::Server,
        local: addr("10.0.0.2:8080"),
        remote: addr("10.0.0.1:40000"),
    };
    let (out, local_in) = conn(10, 6, 20, 5, 40001, 8082);
    let mut w = World::new();
    w.start_born(remote_in, 11, 100, born(7, 1, Some(8), true));
    w.start_born(out, 11, 200, born(7, 2, Some(1), false));
    w.start_born(local_in, 21, 210, born(7, 3, Some(2), true));
    w.done(local_in, "local server", 210, 300);
    w.done(out, "call", 200, 310);
    w.done(remote_in, "server", 100, 400);
    let spans = w.flush();
    let server = by_name(&spans, "server");
    assert_eq!(
        (server.trace_id, server.span_id, server.parent_span_id),
        ([7; 16], [1; 8], Some([8; 8]))
    );
    assert_eq!(link(server), "tcp_option");
    let call = by_name(&spans, "call");
    assert_eq!(
        (call.trace_id, call.span_id, call.parent_span_id, link(call)),
        ([7; 16], [2; 8], Some([1; 8]), "thread")
    );
    // On one host the connection rule still wins; the ids agree with what the wire carried.
    let local = by_name(&spans, "local server");
    assert_eq!(
        (local.span_id, local.parent_span_id, link(local)),
        ([3; 8], Some([2; 8]), "connection")
    );
    assert_eq!(
        w.metrics
            .spans_linked_tcp_option
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    assert_eq!(
        w.metrics
            .propagation_trace_mismatch
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
}

#[test]
fn a_traceparent_wins_and_a_kernel_trace_that_disagrees_is_counted() {
    let (_, server_in) = conn(1, 3, 10, 5, 40000, 8080);
    let (out, _) = conn(10, 6, 20, 5, 40001, 8082);
    let mut w = World::new();
    let tp = super::context::TraceParent {
        trace_id: [9; 16],
        parent_id: [4; 8],
        flags: 1,
    };
    let s = RequestStart {
        key: server_in.key,
        side: Side::Server,
        local: server_in.local,
        remote: server_in.remote,
        tid: 11,
        goid: 0,
        ts_ns: 100,
        traceparent: Some(tp),
        born: Some(born(7, 1, None, false)),
        stream: None,
    };
    w.tracer.start(s, false, &w.metrics, &mut w.out);
    // The kernel did not read the header: the call's wire context has its own trace id.
    w.start_born(out, 11, 200, born(7, 2, Some(1), false));
    w.done(out, "call", 200, 310);
    w.done(server_in, "server", 100, 400);
    let spans = w.flush();
    let server = by_name(&spans, "server");
    assert_eq!(
        (
            server.trace_id,
            server.span_id,
            server.parent_span_id,
            link(server)
        ),
        ([9; 16], [1; 8], Some([4; 8]), "header")
    );
    let call = by_name(&spans, "call");
    assert_eq!(
        (call.trace_id, call.span_id, call.parent_span_id),
        ([9; 16], [2; 8], Some([1; 8]))
    );
    assert_eq!(
        w.metrics
            .propagation_trace_mismatch
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

impl World {
    fn start_with_header(
        &mut self,
        end: End,
        tid: u32,
        ts: u64,
        born: super::context::BornIds,
        tp: super::context::TraceParent,
    ) {
        let s = RequestStart {
            key: end.key,
            side: end.side,
            local: end.local,
            remote: end.remote,
            tid,
            goid: 0,
            ts_ns: ts,
            traceparent: Some(tp),
            born: Some(born),
            stream: None,
        };
        self.tracer.start(s, false, &self.metrics, &mut self.out);
    }
}

#[test]
fn a_traceparent_added_by_ztrace_keeps_the_link_that_carried_it() {
    let server = |fd, port| End {
        key: key(10, fd),
        side: Side::Server,
        local: addr("10.0.0.2:8080"),
        remote: addr(&format!("10.0.0.1:{port}")),
    };
    let tp = |trace: u8, parent: u8| super::context::TraceParent {
        trace_id: [trace; 16],
        parent_id: [parent; 8],
        flags: 1,
    };
    let mut w = World::new();
    // The header the client's kernel added: the same ids as the TCP option.
    w.start_with_header(
        server(5, 40000),
        11,
        100,
        born(7, 1, Some(8), true),
        tp(7, 8),
    );
    w.done(server(5, 40000), "added", 100, 200);
    // An SDK's header (another trace than the option's) wins.
    w.start_with_header(
        server(6, 40001),
        12,
        300,
        born(7, 2, Some(9), true),
        tp(4, 5),
    );
    w.done(server(6, 40001), "sdk", 300, 400);
    let spans = w.flush();
    let added = by_name(&spans, "added");
    assert_eq!(
        (added.trace_id, added.parent_span_id, link(added)),
        ([7; 16], Some([8; 8]), "tcp_option")
    );
    let sdk = by_name(&spans, "sdk");
    assert_eq!(
        (sdk.trace_id, sdk.span_id, sdk.parent_span_id, link(sdk)),
        ([4; 16], [2; 8], Some([5; 8]), "header")
    );
}

impl World {
    /// A finished span as the protocol built it when its request carried `tp` (`header`).
    fn done_with_header(
        &mut self,
        end: End,
        name: &str,
        request_start: u64,
        ts: u64,
        tp: super::context::TraceParent,
    ) {
        let mut span = span(SpanKind::Server, name);
        span.trace_id = tp.trace_id;
        span.parent_span_id = Some(tp.parent_id);
        span.attributes = vec![Attribute::new(LINK_ATTR, "header")];
        let f = Finished {
            span,
            key: end.key,
            side: end.side,
            request_start_ns: request_start,
            peer_traced: true,
            consumer_tid: None,
            stream: None,
        };
        self.tracer.finished(ts, f, &self.metrics, &mut self.out);
    }
}

#[test]
fn a_traceparent_added_on_this_host_gives_way_to_the_same_host_rules() {
    // orders (tgid 1) serves a request on thread 11 and calls users (tgid 2). The kernel gave
    // the call trace 2 and span 3 and wrote them in the header it added; the thread rule puts
    // the call in orders' trace instead.
    let inbound = End {
        key: key(1, 4),
        side: Side::Server,
        local: addr("127.0.0.1:8080"),
        remote: addr("10.9.9.9:50000"),
    };
    let (call, users) = conn(1, 5, 2, 6, 40000, 8081);
    let (users_out, _) = conn(2, 7, 3, 8, 40001, 8082);
    let added = super::context::TraceParent {
        trace_id: [2; 16],
        parent_id: [3; 8],
        flags: 1,
    };
    let mut w = World::new();
    w.start_born(inbound, 11, 100, born(1, 1, None, false));
    w.start_born(call, 11, 200, born(2, 3, None, false));
    // users reads the request with the header the kernel added after ztrace captured the write.
    w.start_with_header(users, 21, 210, born(5, 4, None, false), added);
    w.start(users_out, 21, 220);
    w.done(users_out, "users_out", 220, 230);
    // Its HTTP span applied the header (`header`) before trace assembly saw it.
    w.done_with_header(users, "users", 210, 240, added);
    w.done(call, "call", 200, 250);
    w.done(inbound, "orders", 100, 260);
    let spans = w.flush();
    let orders = by_name(&spans, "orders");
    let call = by_name(&spans, "call");
    assert_eq!(
        (call.trace_id, call.span_id, call.parent_span_id, link(call)),
        (orders.trace_id, [3; 8], Some(orders.span_id), "thread"),
        "the client span keeps the span id written on the wire"
    );
    let users = by_name(&spans, "users");
    assert_eq!(
        (users.trace_id, users.parent_span_id, link(users)),
        (orders.trace_id, Some([3; 8]), "connection")
    );
    let users_out = by_name(&spans, "users_out");
    assert_eq!(
        (users_out.trace_id, users_out.parent_span_id),
        (orders.trace_id, Some(users.span_id))
    );
    assert_eq!(
        w.metrics
            .propagation_trace_mismatch
            .load(std::sync::atomic::Ordering::Relaxed),
        1,
        "the call's trace differs from the one written on the wire"
    );
}

#[test]
fn an_application_header_on_a_local_connection_still_wins() {
    // The client's own bytes carried the header (an SDK): the server takes it as `header`.
    let (c, s) = conn(1, 3, 2, 4, 40000, 80);
    let sdk = super::context::TraceParent {
        trace_id: [6; 16],
        parent_id: [7; 8],
        flags: 1,
    };
    let mut w = World::new();
    w.start_tp(c, 1, 100, Some(sdk));
    w.start_with_header(s, 2, 110, born(8, 9, None, false), sdk);
    w.done_with_header(s, "server", 110, 140, sdk);
    w.done(c, "client", 100, 150);
    let spans = w.flush();
    let server = by_name(&spans, "server");
    assert_eq!(
        (server.trace_id, server.parent_span_id, link(server)),
        (sdk.trace_id, Some(sdk.parent_id), "header")
    );
}
