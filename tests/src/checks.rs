//! Field-by-field checks of HTTP spans against what a test knows about the request it made.
//!
//! Each check names the field, the span and what was expected, so that a failure says exactly
//! which part of the agent's output is wrong.

use crate::Span;

/// What a test knows about one HTTP exchange it made.
#[derive(Clone, Debug)]
pub struct Exchange<'a> {
    pub method: &'a str,
    /// The span name on both sides: `GET /hello`, `GET /items/{id}`.
    pub name: &'a str,
    /// `url.path` (without the query).
    pub path: &'a str,
    pub status_code: i64,
    /// The server's address (`127.0.0.1`, `::1`) and port.
    pub server_host: &'a str,
    pub server_port: u16,
    /// The client's address as the server sees it (loopback: the same as `server_host`).
    pub client_host: &'a str,
}

/// Who emitted a span: accepted `service.name` values and, where known, the pid.
#[derive(Clone, Debug)]
pub struct Emitter<'a> {
    pub services: &'a [&'a str],
    pub pid: Option<u32>,
}

impl<'a> Emitter<'a> {
    pub fn new(services: &'a [&'a str], pid: u32) -> Self {
        Emitter {
            services,
            pid: Some(pid),
        }
    }
}

fn ids_look_right(span: &Span) {
    let hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
            && s.bytes().any(|b| b != b'0')
    };
    assert!(
        span.trace_id().is_some_and(|t| hex(t, 32)),
        "trace_id must be 32 lower-case hex digits, not all zero: {span:?}"
    );
    assert!(
        span.span_id().is_some_and(|t| hex(t, 16)),
        "span_id must be 16 lower-case hex digits, not all zero: {span:?}"
    );
    assert!(
        span.parent_span_id().is_some(),
        "parent_span_id must be present (a hex id or null): {span:?}"
    );
}

fn timing_looks_right(span: &Span) {
    let start = span
        .start_unix_nano()
        .unwrap_or_else(|| panic!("no start_unix_nano: {span:?}"));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let hour = 3_600_000_000_000;
    assert!(
        start + hour > now && start < now + 60_000_000_000,
        "start_unix_nano {start} is not wall-clock time near now ({now}): {span:?}"
    );
    let duration = span
        .duration_nanos()
        .unwrap_or_else(|| panic!("end_unix_nano missing or before start: {span:?}"));
    assert!(duration > 0, "duration must be > 0: {span:?}");
    assert!(
        duration < 60_000_000_000,
        "duration {duration} ns is longer than the test: {span:?}"
    );
}

fn emitter_is(span: &Span, emitter: &Emitter<'_>) {
    let service = span.service();
    assert!(
        service.is_some_and(|s| emitter.services.contains(&s)),
        "service must be one of {:?}, is {service:?}: {span:?}",
        emitter.services
    );
    assert_eq!(
        span.resource_str("service.name"),
        service,
        "resource service.name must equal service: {span:?}"
    );
    if let Some(pid) = emitter.pid {
        assert_eq!(span.pid(), Some(pid), "resource process.pid: {span:?}");
    }
}

/// The server side of an HTTP exchange.
pub fn server_span(span: &Span, exchange: &Exchange<'_>, emitter: &Emitter<'_>) {
    assert_eq!(span.kind(), Some("server"), "kind: {span:?}");
    assert_eq!(span.name(), Some(exchange.name), "name: {span:?}");
    emitter_is(span, emitter);
    ids_look_right(span);
    timing_looks_right(span);
    assert_eq!(
        span.attr_str("http.request.method"),
        Some(exchange.method),
        "http.request.method: {span:?}"
    );
    assert_eq!(
        span.attr_str("url.path"),
        Some(exchange.path),
        "url.path: {span:?}"
    );
    assert_eq!(
        span.attr_i64("http.response.status_code"),
        Some(exchange.status_code),
        "http.response.status_code (an integer): {span:?}"
    );
    assert_eq!(
        span.server_port(),
        Some(exchange.server_port),
        "server.port (an integer): {span:?}"
    );
    assert_eq!(
        span.attr_str("network.peer.address"),
        Some(exchange.client_host),
        "network.peer.address: {span:?}"
    );
    // Semantic conventions: a server span is an error for 5xx only, and is otherwise left unset.
    let status = if exchange.status_code >= 500 {
        "error"
    } else {
        "unset"
    };
    assert_eq!(
        span.status(),
        Some(status),
        "status for HTTP {}: {span:?}",
        exchange.status_code
    );
}

/// The client side of an HTTP exchange.
pub fn client_span(span: &Span, exchange: &Exchange<'_>, emitter: &Emitter<'_>) {
    assert_eq!(span.kind(), Some("client"), "kind: {span:?}");
    // Client spans are named like server spans: `{method} {route}`, the route inferred from the path.
    assert_eq!(span.name(), Some(exchange.name), "name: {span:?}");
    emitter_is(span, emitter);
    ids_look_right(span);
    timing_looks_right(span);
    assert_eq!(
        span.attr_str("http.request.method"),
        Some(exchange.method),
        "http.request.method: {span:?}"
    );
    assert_eq!(
        span.attr_i64("http.response.status_code"),
        Some(exchange.status_code),
        "http.response.status_code (an integer): {span:?}"
    );
    assert_eq!(
        span.server_port(),
        Some(exchange.server_port),
        "server.port (an integer): {span:?}"
    );
    assert_eq!(
        span.attr_str("network.peer.address"),
        Some(exchange.server_host),
        "network.peer.address: {span:?}"
    );
    // Semantic conventions: a client span is an error for 4xx and 5xx.
    let status = if exchange.status_code >= 400 {
        "error"
    } else {
        "unset"
    };
    assert_eq!(
        span.status(),
        Some(status),
        "status for HTTP {}: {span:?}",
        exchange.status_code
    );
}

/// Both ends of one local connection: the client span is the server span's parent (DESIGN.md,
/// "Trace assembly").
pub fn linked(client: &Span, server: &Span) {
    assert_eq!(server.trace_id(), client.trace_id(), "server and client spans of one exchange share the trace:\nclient {client:?}\nserver {server:?}");
    assert_eq!(
        server.parent_span_id(),
        Some(client.span_id()),
        "the client span is the server span's parent:\nclient {client:?}\nserver {server:?}"
    );
    assert!(
        server.start_unix_nano() >= client.start_unix_nano()
            && server.end_unix_nano() <= client.end_unix_nano(),
        "the server span lies within the client span:\nclient {client:?}\nserver {server:?}"
    );
}

/// The parent pid of a process (e.g. to tie an nginx worker to its master).
pub fn parent_pid(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 1..]
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}
