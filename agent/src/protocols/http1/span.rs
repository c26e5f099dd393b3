//! HTTP/1.x exchanges → spans, following the stable OpenTelemetry HTTP semantic conventions.
//!
//! [`http_span`] turns one request/response pair seen on a connection into a server span (the
//! traced process received the request) or a client span (it sent it). Its name is
//! `{method} {route}`, where the route is inferred from the path by [`infer_route`]: segments
//! that look like identifiers become placeholders (`/orders/42` → `/orders/{id}`), so names stay
//! few even when paths carry ids. It is a heuristic: a path of words that are really values
//! (`/users/alice`) keeps them, and about one random 22-character base62 token in 2,500 is
//! taken for a word (measured); a stateful limit on distinct names per service is left to the
//! caller.
//!
//! Times are the kernel's syscall-exit times: a span starts when the first syscall moving
//! request bytes returned and ends when the last syscall moving response bytes returned.
//!
//! Headers are never exported except `User-Agent` (as `user_agent.original`); query values under
//! sensitive keys and URL credentials are replaced by `REDACTED`. Trace linking is not done here
//! beyond an incoming W3C `traceparent` header; every other span starts its own trace.


use compact_str::CompactString;
use std::borrow::Cow;
use std::{net::IpAddr, sync::Arc};

use super::{redact::redact_query, route::infer_route, HttpExchange, HttpRequest};
use crate::{
    protocols::{Endpoints, Side},
    spans::{clock::Clock, ip_string, new_span_id, new_trace_id, Attribute, Resource, Span, SpanKind, StatusCode},
    trace::context::{parse_traceparent, TraceParent},
};

/// Longest string attribute taken from the wire (path, query, user agent), in bytes.
const MAX_ATTR_LEN: usize = 2048;

/// Longest `http.request.method_original` kept, in bytes.
const MAX_METHOD_LEN: usize = 32;
/// Builds the span of one HTTP/1.x exchange.
///
/// - Kind: server for [`Side::Server`], client for [`Side::Client`].
/// - Name: `{method} {route}` (`HTTP {route}` for a method outside the conventions' list;
///   just `{method}` when the target has no path, as `CONNECT host:443` or `OPTIONS *`).
/// - Route: `http.route` on server spans, `url.template` on client spans (the conventions
///   reserve `http.route` for the server side).
/// - Status: error for 5xx on server spans and for 4xx and 5xx on client spans (with
///   `error.type` = the status code), else unset.
/// - Trace: a valid `traceparent` request header gives the trace id and the parent
///   (`ztrace.link` = `header`); otherwise a new trace with no parent (`ztrace.link` = `none`).
pub fn http_span(ex: &HttpExchange, conn: &Endpoints, resource: &Arc<Resource>, clock: &Clock) -> Span {
    let req = &ex.request;
    let target = Target::parse(&req.target);
    let route = target.path.map(infer_route);

    let known_method = is_known_method(&req.method);
    let name_method = if known_method { req.method.as_str() } else { "HTTP" };
    let name = match &route {
        Some(route) => {
            let mut name = String::with_capacity(name_method.len() + 1 + route.len());
            name.push_str(name_method);
            name.push(' ');
            name.push_str(route);
            name
        }
        None => name_method.to_owned(),
    };
    let kind = match ex.side {
        Side::Server => SpanKind::Server,
        Side::Client => SpanKind::Client,
    };

    let mut attrs = Vec::with_capacity(24);
    if known_method {
        attrs.push(Attribute::new("http.request.method", req.method.as_str()));
    } else {
        attrs.push(Attribute::new("http.request.method", "_OTHER"));
        attrs.push(Attribute::new(
            "http.request.method_original",
            truncate(&req.method, MAX_METHOD_LEN),
        ));
    }

    let scheme = target.scheme.unwrap_or(if conn.tls { "https" } else { "http" });
    let (server_host, server_port) = server_address(ex.side, &target, req, conn);
    if ex.side == Side::Client {
        attrs
            .push(Attribute::new("url.full", full_url(scheme, &server_host, server_port, &target)));
    }
    attrs.push(Attribute::new("url.scheme", scheme));
    if let Some(path) = target.path {
        attrs.push(Attribute::new("url.path", truncate(path, MAX_ATTR_LEN)));
    }
    if let Some(query) = target.query.filter(|q| !q.is_empty()) {
        attrs.push(Attribute::new("url.query", truncate(&redact_query(query), MAX_ATTR_LEN)));
    }
    if let Some(route) = route {
        let key = if ex.side == Side::Server { "http.route" } else { "url.template" };
        attrs.push(Attribute::new(key, route));
    }
    // An unanswered request has no status code (`Exchange::span` marks it).
    let status = ex.response.as_ref().map(|r| r.status);
    if let Some(status) = status {
        attrs.push(Attribute::new("http.response.status_code", i64::from(status)));
    }
    let version = match req.version_minor {
        0 => CompactString::const_new("1.0"),
        1 => CompactString::const_new("1.1"),
        minor => compact_str::format_compact!("1.{minor}"),
    };
    attrs.push(Attribute::new("network.protocol.version", version));
    attrs.push(Attribute::new("server.address", server_host));
    attrs.push(Attribute::new("server.port", i64::from(server_port)));
    if ex.side == Side::Server {
        let client = forwarded_client(req).unwrap_or_else(|| ip_string(conn.remote.ip()));
        attrs.push(Attribute::new("client.address", client));
    }
    attrs.push(Attribute::new("network.peer.address", ip_string(conn.remote.ip())));
    attrs.push(Attribute::new("network.peer.port", i64::from(conn.remote.port())));
    attrs.push(Attribute::new("network.local.address", ip_string(conn.local.ip())));
    attrs.push(Attribute::new("network.local.port", i64::from(conn.local.port())));
    if let Some(ua) = header(req, "user-agent") {
        attrs.push(Attribute::new("user_agent.original", truncate(&ua, MAX_ATTR_LEN)));
    }
    if req.body_len > 0 {
        attrs.push(Attribute::new("http.request.body.size", saturating_i64(req.body_len)));
    }
    if let Some(body_len) = ex.response.as_ref().map(|r| r.body_len).filter(|&n| n > 0) {
        attrs.push(Attribute::new("http.response.body.size", saturating_i64(body_len)));
    }

    let error_status = status.filter(|&status| match ex.side {
        Side::Server => status >= 500,
        Side::Client => status >= 400,
    });
    let is_error = error_status.is_some();
    if let Some(status) = error_status {
        attrs.push(Attribute::new("error.type", status.to_string()));
    }

    let parent = single_header(req, "traceparent").as_deref().and_then(parse_traceparent);
    attrs.push(Attribute::new("ztrace.link", if parent.is_some() { "header" } else { "none" }));

    let start_unix_nano = clock.to_unix(ex.request_start_ns);
    let end_unix_nano = clock.to_unix(ex.response_end_ns).max(start_unix_nano);
    Span {
        trace_id: parent.map_or_else(new_trace_id, |p| p.trace_id),
        span_id: new_span_id(),
        parent_span_id: parent.map(|p| p.parent_id),
        name,
        kind,
        start_unix_nano,
        end_unix_nano,
        status: if is_error { StatusCode::Error } else { StatusCode::Unset },
        status_message: None,
        attributes: attrs,
        resource: resource.clone(),
    }
}

/// The methods the HTTP semantic conventions know (RFC 9110, RFC 5789 and `QUERY`); any other
/// is reported as `_OTHER`. Case-sensitive, as the conventions ask.
fn is_known_method(method: &str) -> bool {
    matches!(
        method,
        "GET"
            | "HEAD"
            | "POST"
            | "PUT"
            | "DELETE"
            | "CONNECT"
            | "OPTIONS"
            | "TRACE"
            | "PATCH"
            | "QUERY"
    )
}

/// The parts of a request-target (RFC 9112 §3.2).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Target<'a> {
    /// From an absolute-form target (`http://host/path`, sent to proxies).
    scheme: Option<&'a str>,
    /// From an absolute-form or authority-form (`CONNECT host:443`) target; may hold user-info.
    authority: Option<&'a str>,
    /// The path, without query or fragment; `None` for authority-form and `*`.
    path: Option<&'a str>,
    /// The query, without `?`.
    query: Option<&'a str>,
}

impl<'a> Target<'a> {
    fn parse(target: &'a str) -> Target<'a> {
        let target = target.split('#').next().unwrap_or(target);
        if target == "*" {
            return Target::default();
        }
        let (scheme, authority, rest) = if target.starts_with('/') {
            (None, None, target)
        } else if let Some((scheme, after)) = target.split_once("://") {
            let end = after.find(['/', '?']).unwrap_or(after.len());
            (Some(scheme), Some(&after[..end]), &after[end..])
        } else {
            return Target { authority: Some(target), ..Target::default() };
        };
        let (path, query) = match rest.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (rest, None),
        };
        let path = if path.is_empty() { "/" } else { path };
        Target { scheme, authority, path: Some(path), query }
    }
}

/// `server.address` and `server.port`: from the target's authority or the `Host` header, else
/// the peer (client spans) or the local address (server spans). A `Host` without a port takes
/// the connection's port.
fn server_address(
    side: Side,
    target: &Target<'_>,
    req: &HttpRequest,
    conn: &Endpoints,
) -> (CompactString, u16) {
    let socket = match side {
        Side::Client => conn.remote,
        Side::Server => conn.local,
    };
    let host;
    let authority = match target.authority {
        Some(authority) => Some(authority),
        None => {
            host = header(req, "host");
            host.as_deref()
        }
    };
    if let Some((host, port)) = authority.and_then(split_host_port) {
        return (CompactString::from(host), port.unwrap_or(socket.port()));
    }
    (ip_string(socket.ip()), socket.port())
}

/// `host[:port]`, `[v6]:port` → host (without brackets or user-info) and port; `None` for an
/// empty or unusable host.
fn split_host_port(authority: &str) -> Option<(&str, Option<u16>)> {
    let authority = authority.trim();
    let authority = authority.rsplit_once('@').map_or(authority, |(_, hp)| hp);
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        (host, after.strip_prefix(':'))
    } else {
        match authority.split_once(':') {
            Some((h, p)) if !p.contains(':') => (h, Some(p)),
            Some(_) => (authority, None), // a bare IPv6 address
            None => (authority, None),
        }
    };
    if host.is_empty()
        || host.len() > 255
        || host.contains(|c: char| c.is_whitespace() || c.is_control())
    {
        return None;
    }
    let port = match port {
        Some(p) if !p.is_empty() => Some(p.parse().ok()?),
        _ => None,
    };
    Some((host, port))
}

/// `url.full` of a client request, credentials and sensitive query values redacted.
fn full_url(scheme: &str, host: &str, port: u16, target: &Target<'_>) -> String {
    let default_port = match scheme {
        "https" => 443,
        _ => 80,
    };
    let path = target.path.unwrap_or("");
    let mut url = String::with_capacity(scheme.len() + host.len() + path.len() + 16);
    url.push_str(scheme);
    url.push_str("://");
    if host.contains(':') {
        url.push('[');
        url.push_str(host);
        url.push(']');
    } else {
        url.push_str(host);
    }
    if port != default_port {
        url.push(':');
        url.push_str(itoa::Buffer::new().format(port));
    }
    url.push_str(path);
    if let Some(q) = target.query.filter(|q| !q.is_empty()) {
        url.push('?');
        url.push_str(&redact_query(q));
    }
    truncate(&url, MAX_ATTR_LEN)
}

/// The original client behind proxies: the first `X-Forwarded-For` entry, else the first
/// `for=` of `Forwarded` (RFC 7239), without port or brackets.
fn forwarded_client(req: &HttpRequest) -> Option<CompactString> {
    let xff = header(req, "x-forwarded-for");
    let fwd = header(req, "forwarded");
    let raw = if let Some(xff) = &xff {
        xff.split(',').next()?.trim()
    } else {
        let fwd = fwd.as_deref()?;
        let first = fwd.split(',').next()?;
        first.split(';').find_map(|p| {
            let (k, v) = p.trim().split_once('=')?;
            k.trim().eq_ignore_ascii_case("for").then_some(v.trim().trim_matches('"'))
        })?
    };
    let host = if let Some(rest) = raw.strip_prefix('[') {
        rest.split(']').next()?
    } else if raw.parse::<IpAddr>().is_ok() {
        raw
    } else {
        raw.rsplit_once(':').map_or(raw, |(h, _)| h)
    };
    (!host.is_empty() && host.len() <= 64 && !host.contains(char::is_whitespace))
        .then(|| CompactString::from(host))
}

/// The first value of a header, without surrounding white space.
fn header<'a>(req: &'a HttpRequest, name: &'a str) -> Option<Cow<'a, str>> {
    req.headers.get(name).map(trimmed)
}

/// The value of a header that must appear exactly once.
fn single_header<'a>(req: &'a HttpRequest, name: &'a str) -> Option<Cow<'a, str>> {
    let mut values = req.headers.all(name);
    let first = values.next()?;
    values.next().is_none().then(|| trimmed(first))
}

fn trimmed(value: Cow<'_, str>) -> Cow<'_, str> {
    match value {
        Cow::Borrowed(s) => Cow::Borrowed(s.trim()),
        Cow::Owned(s) => Cow::Owned(s.trim().to_owned()),
    }
}

/// The `traceparent` header of the request head at the start of `bytes` (the first bytes of a
/// request, as read or written), if its header lines seen there hold exactly one valid one.
/// Looks no further than the end of the head or of `bytes`; never allocates.
pub fn find_traceparent(bytes: &[u8]) -> Option<TraceParent> {
    const NAME: &[u8] = b"traceparent:";
    let head_end = memchr::memmem::find(bytes, b"\r\n\r\n").unwrap_or(bytes.len());
    let head = &bytes[..head_end];
    let mut found = None;
    // Skip the request line; a header line cut at the end of `bytes` is not trusted.
    let mut at = memchr::memchr(b'\n', head).map(|i| i + 1)?;
    while at < head.len() {
        let (line, next) = match memchr::memchr(b'\n', &head[at..]) {
            Some(i) => (&head[at..at + i], at + i + 1),
            None if head_end == bytes.len() => break,
            None => (&head[at..], head.len()),
        };
        at = next;
        // Most lines are other headers: the first byte rules them out.
        if line.len() <= NAME.len() || !line[0].eq_ignore_ascii_case(&b't') {
            continue;
        }
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.len() > NAME.len() && line[..NAME.len()].eq_ignore_ascii_case(NAME) {
            if found.is_some() {
                return None; // twice: ignored, as http_span does
            }
            // Malformed: ignored (returns None).
            found = Some(std::str::from_utf8(&line[NAME.len()..]).ok().and_then(parse_traceparent)?);
        }
    }
    found
}
/// At most `max` bytes of `s`, cut at a character boundary.
fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut cut = max;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    s[..cut].to_owned()
}

fn saturating_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}
#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::{
        protocols::http1::HttpResponse,
        spans::{hex, AttrValue, Resource},
    };

    #[test]
    fn finds_traceparent_in_the_first_bytes_of_a_request() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let head = format!("GET / HTTP/1.1\r\nHost: a\r\nTraceParent: {tp}\r\n\r\nbody traceparent: x");
        assert_eq!(find_traceparent(head.as_bytes()), parse_traceparent(tp));
        assert!(find_traceparent(head.as_bytes()).is_some());
        // Cut inside the header line: not trusted; twice or malformed: ignored; none at all.
        assert_eq!(find_traceparent(&head.as_bytes()[..40]), None);
        let twice = format!("GET / HTTP/1.1\r\ntraceparent: {tp}\r\ntraceparent: {tp}\r\n\r\n");
        assert_eq!(find_traceparent(twice.as_bytes()), None);
        assert_eq!(find_traceparent(b"GET / HTTP/1.1\r\ntraceparent: 00-zz\r\n\r\n"), None);
        assert_eq!(find_traceparent(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"), None);
        assert_eq!(find_traceparent(b""), None);
    }

    #[test]
    fn an_unanswered_request_is_an_error_span_without_a_status_code() {
        use crate::protocols::Exchange;
        let clock = Clock::from_offset_ns(0);
        for (side, error_type) in [(Side::Server, "client_closed"), (Side::Client, "no_response")] {
            let mut ex = exchange(side, "GET", "/slow", 200, &[]);
            ex.response = None;
            ex.response_end_ns = 7_000;
            let span = ex.span(&conn("127.0.0.1:8080", "127.0.0.1:51234"), &process(), &clock);
            assert_eq!(span.status, StatusCode::Error);
            assert!(span.status_message.is_some());
            assert_eq!((span.start_unix_nano, span.end_unix_nano), (1_000, 7_000));
            let attr = |key: &str| span.attributes.iter().find(|a| a.key == key).map(|a| a.value.clone());
            assert_eq!(attr("error.type"), Some(AttrValue::Str(error_type.into())));
            assert_eq!(attr("http.response.status_code"), None);
            assert_eq!(attr("http.response.body.size"), None);
            assert_eq!(attr("url.path"), Some(AttrValue::Str("/slow".into())));
            assert_eq!(span.attributes.iter().filter(|a| a.key == "error.type").count(), 1);
        }
        // Answered: `span` is `to_span`.
        let ex = exchange(Side::Server, "GET", "/ok", 200, &[]);
        assert!(ex.answered());
        assert_eq!(ex.span(&conn("127.0.0.1:8080", "127.0.0.1:1"), &process(), &clock).status, StatusCode::Unset);
    }

    #[test]
    fn splits_hosts_and_ports() {
        assert_eq!(split_host_port("example.com"), Some(("example.com", None)));
        assert_eq!(split_host_port("example.com:8080"), Some(("example.com", Some(8080))));
        assert_eq!(split_host_port("[::1]:8080"), Some(("::1", Some(8080))));
        assert_eq!(split_host_port("[::1]"), Some(("::1", None)));
        assert_eq!(split_host_port("::1"), Some(("::1", None)));
        assert_eq!(split_host_port("user:pw@db:5432"), Some(("db", Some(5432))));
        assert_eq!(split_host_port("example.com:"), Some(("example.com", None)));
        assert_eq!(split_host_port("example.com:99999"), None);
        assert_eq!(split_host_port(""), None);
        assert_eq!(split_host_port("a b"), None);
    }

    fn process() -> Arc<Resource> {
        crate::spans::testing::resource("orders", 4242)
    }

    fn exchange(
        side: Side,
        method: &str,
        target: &str,
        status: u16,
        headers: &[(&str, &str)],
    ) -> HttpExchange {
        HttpExchange {
            side,
            request: HttpRequest {
                method: method.into(),
                target: target.into(),
                version_minor: 1,
                headers: super::super::Headers::from_pairs(headers.iter().copied()),
                body_len: 0,
            },
            response: Some(HttpResponse { status, version_minor: 1, headers: super::super::Headers::default(), body_len: 512 }),
            request_start_ns: 1_000,
            request_end_ns: 2_000,
            response_start_ns: 5_000,
            response_end_ns: 9_000,
            request_tid: 10,
            response_tid: 11,
        }
    }

    fn conn(local: &str, remote: &str) -> Endpoints {
        Endpoints {
            local: local.parse().expect("test address"),
            remote: remote.parse().expect("test address"),
            tls: false,
        }
    }

    fn attrs(span: &Span) -> Vec<(&'static str, AttrValue)> {
        span.attributes.iter().map(|a| (a.key, a.value.clone())).collect()
    }

    fn s(v: &str) -> AttrValue {
        AttrValue::from(v)
    }

    #[test]
    fn builds_server_spans() {
        let ex = exchange(
            Side::Server,
            "GET",
            "/orders/42?token=abc&page=2",
            200,
            &[
                ("host", "shop.example:8080"),
                ("user-agent", "curl/8.5.0"),
                ("authorization", "Bearer secret"),
                ("cookie", "sid=1"),
            ],
        );
        let clock = Clock::from_offset_ns(1_700_000_000_000_000_000);
        let span = http_span(&ex, &conn("10.0.0.5:8080", "10.0.0.9:51234"), &process(), &clock);
        assert_eq!(span.name, "GET /orders/{id}");
        assert_eq!(span.kind, SpanKind::Server);
        assert_eq!(span.start_unix_nano, 1_700_000_000_000_001_000);
        assert_eq!(span.end_unix_nano, 1_700_000_000_000_009_000);
        assert_eq!(span.status, StatusCode::Unset);
        assert_eq!(span.status_message, None);
        assert_eq!(span.parent_span_id, None);
        assert_ne!(span.trace_id, [0; 16]);
        assert_ne!(span.span_id, [0; 8]);
        assert_eq!(span.resource.service_name, "orders");
        assert_eq!(
            attrs(&span),
            vec![
                ("http.request.method", s("GET")),
                ("url.scheme", s("http")),
                ("url.path", s("/orders/42")),
                ("url.query", s("token=REDACTED&page=2")),
                ("http.route", s("/orders/{id}")),
                ("http.response.status_code", AttrValue::Int(200)),
                ("network.protocol.version", s("1.1")),
                ("server.address", s("shop.example")),
                ("server.port", AttrValue::Int(8080)),
                ("client.address", s("10.0.0.9")),
                ("network.peer.address", s("10.0.0.9")),
                ("network.peer.port", AttrValue::Int(51234)),
                ("network.local.address", s("10.0.0.5")),
                ("network.local.port", AttrValue::Int(8080)),
                ("user_agent.original", s("curl/8.5.0")),
                ("http.response.body.size", AttrValue::Int(512)),
                ("ztrace.link", s("none")),
            ]
        );
    }

    #[test]
    fn builds_client_spans() {
        let mut ex = exchange(
            Side::Client,
            "POST",
            "/api/users/550e8400-e29b-41d4-a716-446655440000",
            404,
            &[("host", "api.internal")],
        );
        ex.request.body_len = 77;
        ex.request.version_minor = 0;
        let span = http_span(
            &ex,
            &conn("10.0.0.5:40000", "10.0.0.7:8000"),
            &process(),
            &Clock::from_offset_ns(0),
        );
        assert_eq!(span.name, "POST /api/users/{id}");
        assert_eq!(span.kind, SpanKind::Client);
        assert_eq!((span.start_unix_nano, span.end_unix_nano), (1_000, 9_000));
        assert_eq!(span.status, StatusCode::Error);
        assert_eq!(
            attrs(&span),
            vec![
                ("http.request.method", s("POST")),
                (
                    "url.full",
                    s("http://api.internal:8000/api/users/550e8400-e29b-41d4-a716-446655440000")
                ),
                ("url.scheme", s("http")),
                ("url.path", s("/api/users/550e8400-e29b-41d4-a716-446655440000")),
                ("url.template", s("/api/users/{id}")),
                ("http.response.status_code", AttrValue::Int(404)),
                ("network.protocol.version", s("1.0")),
                ("server.address", s("api.internal")),
                ("server.port", AttrValue::Int(8000)),
                ("network.peer.address", s("10.0.0.7")),
                ("network.peer.port", AttrValue::Int(8000)),
                ("network.local.address", s("10.0.0.5")),
                ("network.local.port", AttrValue::Int(40000)),
                ("http.request.body.size", AttrValue::Int(77)),
                ("http.response.body.size", AttrValue::Int(512)),
                ("error.type", s("404")),
                ("ztrace.link", s("none")),
            ]
        );
    }

    fn attr(span: &Span, key: &str) -> Option<AttrValue> {
        span.attributes.iter().find(|a| a.key == key).map(|a| a.value.clone())
    }

    #[test]
    fn statuses_follow_the_conventions() {
        let c = conn("127.0.0.1:80", "127.0.0.1:5000");
        let clock = Clock::from_offset_ns(0);
        let cases = [
            (Side::Server, 404, StatusCode::Unset),
            (Side::Server, 500, StatusCode::Error),
            (Side::Server, 503, StatusCode::Error),
            (Side::Client, 302, StatusCode::Unset),
            (Side::Client, 400, StatusCode::Error),
            (Side::Client, 502, StatusCode::Error),
        ];
        for (side, status, want) in cases {
            let span = http_span(&exchange(side, "GET", "/", status, &[]), &c, &process(), &clock);
            assert_eq!(span.status, want, "{side:?} {status}");
            assert_eq!(attr(&span, "error.type").is_some(), want == StatusCode::Error);
        }
    }

    #[test]
    fn addresses_without_host_header_come_from_the_connection() {
        let clock = Clock::from_offset_ns(0);
        let c = conn("[::1]:8443", "[::1]:60000");
        let server =
            http_span(&exchange(Side::Server, "GET", "/", 200, &[]), &c, &process(), &clock);
        assert_eq!(attr(&server, "server.address"), Some(s("::1")));
        assert_eq!(attr(&server, "server.port"), Some(AttrValue::Int(8443)));
        let client = http_span(
            &exchange(Side::Client, "GET", "/x?a=1&password=p", 200, &[]),
            &c,
            &process(),
            &clock,
        );
        assert_eq!(attr(&client, "server.port"), Some(AttrValue::Int(60000)));
        assert_eq!(
            attr(&client, "url.full"),
            Some(s("http://[::1]:60000/x?a=1&password=REDACTED"))
        );
        // A Host header without a port takes the connection's.
        let c = conn("10.0.0.5:40000", "10.0.0.7:80");
        let client = http_span(
            &exchange(Side::Client, "GET", "/", 200, &[("host", "web")]),
            &c,
            &process(),
            &clock,
        );
        assert_eq!(attr(&client, "server.port"), Some(AttrValue::Int(80)));
        assert_eq!(attr(&client, "url.full"), Some(s("http://web/")));
    }

    #[test]
    fn proxies_and_odd_targets() {
        let clock = Clock::from_offset_ns(0);
        let c = conn("10.0.0.5:40000", "10.0.0.1:3128");
        let proxied = exchange(
            Side::Client,
            "GET",
            "http://user:pw@example.com:8080/a/7?x=1",
            200,
            &[("host", "example.com:8080")],
        );
        let span = http_span(&proxied, &c, &process(), &clock);
        assert_eq!(span.name, "GET /a/{id}");
        assert_eq!(attr(&span, "server.address"), Some(s("example.com")));
        assert_eq!(attr(&span, "server.port"), Some(AttrValue::Int(8080)));
        assert_eq!(attr(&span, "url.full"), Some(s("http://example.com:8080/a/7?x=1")));
        assert_eq!(attr(&span, "url.path"), Some(s("/a/7")));

        let connect = exchange(Side::Client, "CONNECT", "example.com:443", 200, &[]);
        let span = http_span(&connect, &c, &process(), &clock);
        assert_eq!(span.name, "CONNECT");
        assert_eq!(attr(&span, "server.port"), Some(AttrValue::Int(443)));
        assert_eq!(attr(&span, "url.path"), None);

        let star = exchange(Side::Server, "OPTIONS", "*", 200, &[]);
        assert_eq!(http_span(&star, &c, &process(), &clock).name, "OPTIONS");

        let odd = exchange(Side::Server, "PURGE", "/cache/item", 200, &[]);
        let span = http_span(&odd, &c, &process(), &clock);
        assert_eq!(span.name, "HTTP /cache/item");
        assert_eq!(attr(&span, "http.request.method"), Some(s("_OTHER")));
        assert_eq!(attr(&span, "http.request.method_original"), Some(s("PURGE")));
        let lower = exchange(Side::Server, "get", "/", 200, &[]);
        assert_eq!(http_span(&lower, &c, &process(), &clock).name, "HTTP /");
    }

    #[test]
    fn forwarded_clients() {
        let clock = Clock::from_offset_ns(0);
        let c = conn("10.0.0.5:80", "10.0.0.1:5000");
        let client_of = |headers: &[(&str, &str)]| {
            let span = http_span(
                &exchange(Side::Server, "GET", "/", 200, headers),
                &c,
                &process(),
                &clock,
            );
            attr(&span, "client.address")
        };
        assert_eq!(
            client_of(&[("x-forwarded-for", "203.0.113.7, 10.0.0.1")]),
            Some(s("203.0.113.7"))
        );
        assert_eq!(
            client_of(&[("forwarded", "for=\"[2001:db8::1]:4711\";proto=http, for=10.0.0.1")]),
            Some(s("2001:db8::1"))
        );
        assert_eq!(
            client_of(&[("forwarded", "proto=http;For=198.51.100.2:80")]),
            Some(s("198.51.100.2"))
        );
        assert_eq!(client_of(&[("x-forwarded-for", "2001:db8::2")]), Some(s("2001:db8::2")));
        assert_eq!(client_of(&[]), Some(s("10.0.0.1")));
    }

    #[test]
    fn honours_traceparent() {
        let clock = Clock::from_offset_ns(0);
        let c = conn("10.0.0.5:80", "10.0.0.1:5000");
        let tp = ("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        let span = http_span(
            &exchange(Side::Server, "GET", "/", 200, &[tp, ("tracestate", "a=b")]),
            &c,
            &process(),
            &clock,
        );
        assert_eq!(hex(&span.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(span.parent_span_id.map(|p| hex(&p)).as_deref(), Some("00f067aa0ba902b7"));
        assert_ne!(span.span_id, [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]);
        assert_eq!(attr(&span, "ztrace.link"), Some(s("header")));
        assert!(span.attributes.iter().all(|a| !a.key.contains("trace") || a.key == "ztrace.link"));

        // Two traceparent headers, or a malformed one, are ignored.
        let twice = exchange(Side::Server, "GET", "/", 200, &[tp, tp]);
        let span = http_span(&twice, &c, &process(), &clock);
        assert_eq!((span.parent_span_id, attr(&span, "ztrace.link")), (None, Some(s("none"))));
        let bad = exchange(Side::Server, "GET", "/", 200, &[("traceparent", "00-xyz")]);
        assert_eq!(http_span(&bad, &c, &process(), &clock).parent_span_id, None);
    }

    #[test]
    fn never_exports_secret_headers() {
        let headers = [
            ("authorization", "Bearer abc"),
            ("cookie", "sid=abc"),
            ("proxy-authorization", "Basic abc"),
            ("x-api-key", "abc"),
        ];
        let ex = exchange(Side::Server, "GET", "/", 200, &headers);
        let span = http_span(
            &ex,
            &conn("10.0.0.5:80", "10.0.0.1:5000"),
            &process(),
            &Clock::from_offset_ns(0),
        );
        for a in &span.attributes {
            assert!(!format!("{:?}", a.value).contains("abc"), "{a:?}");
        }
    }

    #[test]
    fn end_is_never_before_start() {
        let mut ex = exchange(Side::Server, "GET", "/", 200, &[]);
        ex.response_end_ns = 10;
        let span = http_span(
            &ex,
            &conn("10.0.0.5:80", "10.0.0.1:5000"),
            &process(),
            &Clock::from_offset_ns(0),
        );
        assert_eq!(span.end_unix_nano, span.start_unix_nano);
    }
}
