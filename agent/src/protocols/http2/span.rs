//! HTTP/2 exchanges → spans: gRPC calls by the RPC semantic conventions, other requests by the
//! HTTP ones (the HTTP/1 span rules, `network.protocol.version` `2`).
//!
//! gRPC (OpenTelemetry RPC conventions, the current `rpc.system.name` / `rpc.method` /
//! `rpc.response.status_code` names):
//! - name: `rpc.method`, the full method `package.Service/Method`; `grpc` when the path is
//!   unknown (an HPACK entry from before ztrace) or not a method path (`rpc.method` `_OTHER`,
//!   the path in `rpc.method_original`);
//! - `rpc.response.status_code`: the status name (`OK`, `NOT_FOUND`, ...) from `grpc-status` in
//!   the trailers (or a trailers-only answer), else from the HTTP status as gRPC maps it, else,
//!   for a stream cancelled by `RST_STREAM`, `DEADLINE_EXCEEDED` when its `grpc-timeout` had run
//!   out, `CANCELLED` otherwise;
//! - error status: on client spans every code but `OK`; on server spans `UNKNOWN`,
//!   `DEADLINE_EXCEEDED`, `UNIMPLEMENTED`, `INTERNAL`, `UNAVAILABLE`, `DATA_LOSS`; `error.type`
//!   is the code's name. A stream reset without a status is an error whose `error.type` is the
//!   HTTP/2 error code's name.
//!
//! `grpc-message` and metadata are never exported.

use compact_str::CompactString;
use std::sync::Arc;

use super::{Head, Http2Exchange};
use crate::{
    protocols::{
        http1::{span::http_span, Headers, HttpExchange, HttpRequest, HttpResponse},
        Endpoints, Side,
    },
    spans::{
        clock::Clock, ip_string, new_span_id, new_trace_id, AttrValue, Attribute, Resource, Span, SpanKind, StatusCode,
    },
    trace::context::parse_traceparent,
};

/// The semantic-convention names this protocol writes, in one place.
pub mod attr {
    pub const RPC_SYSTEM_NAME: &str = "rpc.system.name";
    pub const RPC_METHOD: &str = "rpc.method";
    pub const RPC_METHOD_ORIGINAL: &str = "rpc.method_original";
    pub const RPC_RESPONSE_STATUS_CODE: &str = "rpc.response.status_code";
    pub const HTTP_REQUEST_METHOD: &str = "http.request.method";
    pub const HTTP_REQUEST_METHOD_ORIGINAL: &str = "http.request.method_original";
    pub const NETWORK_PROTOCOL_NAME: &str = "network.protocol.name";
    pub const NETWORK_PROTOCOL_VERSION: &str = "network.protocol.version";
    pub const SERVER_ADDRESS: &str = "server.address";
    pub const SERVER_PORT: &str = "server.port";
    pub const CLIENT_ADDRESS: &str = "client.address";
    pub const NETWORK_PEER_ADDRESS: &str = "network.peer.address";
    pub const NETWORK_PEER_PORT: &str = "network.peer.port";
    pub const NETWORK_LOCAL_ADDRESS: &str = "network.local.address";
    pub const NETWORK_LOCAL_PORT: &str = "network.local.port";
    pub const USER_AGENT_ORIGINAL: &str = "user_agent.original";
    pub const ERROR_TYPE: &str = "error.type";
    /// ztrace's own: how the parent was found (`trace/`).
    pub const ZTRACE_LINK: &str = "ztrace.link";
    /// ztrace's own: header fields that referred to HPACK entries ztrace never saw.
    pub const ZTRACE_HPACK_UNKNOWN: &str = "ztrace.http2.unknown_fields";
    /// The value of `rpc.system.name`.
    pub const GRPC: &str = "grpc";
    /// `rpc.method` / `http.request.method` when unknown or not recognized.
    pub const OTHER: &str = "_OTHER";
}

/// gRPC status codes by number (grpc/doc/statuscodes.md).
const GRPC_CODES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// Codes that make a server span an error (RPC conventions, gRPC).
const GRPC_SERVER_ERRORS: [&str; 6] =
    ["UNKNOWN", "DEADLINE_EXCEEDED", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS"];

/// HTTP/2 error codes by number (RFC 9113 §7).
const H2_ERRORS: [&str; 14] = [
    "NO_ERROR",
    "PROTOCOL_ERROR",
    "INTERNAL_ERROR",
    "FLOW_CONTROL_ERROR",
    "SETTINGS_TIMEOUT",
    "STREAM_CLOSED",
    "FRAME_SIZE_ERROR",
    "REFUSED_STREAM",
    "CANCEL",
    "COMPRESSION_ERROR",
    "CONNECT_ERROR",
    "ENHANCE_YOUR_CALM",
    "INADEQUATE_SECURITY",
    "HTTP_1_1_REQUIRED",
];

const CANCEL: u32 = 0x8;

/// Longest string attribute taken from the wire, in bytes.
const MAX_ATTR_LEN: usize = 2048;

fn h2_error_name(code: u32) -> String {
    H2_ERRORS.get(code as usize).map_or_else(|| format!("0x{code:x}"), |s| (*s).to_owned())
}

/// The span of one stream.
pub fn span(ex: &Http2Exchange, conn: &Endpoints, resource: &Arc<Resource>, clock: &Clock) -> Span {
    let mut span =
        if is_grpc(ex) { grpc_span(ex, conn, resource, clock) } else { http_span_of(ex, conn, resource, clock) };
    let unknown = ex.unknown_fields();
    if unknown > 0 {
        span.attributes.push(Attribute::new(attr::ZTRACE_HPACK_UNKNOWN, unknown as i64));
    }
    span
}

/// A gRPC call: its content type says so, or its answer carries `grpc-status`, or — its content
/// type unknown — its path has the `/Service/Method` shape on a `POST`.
pub fn is_grpc(ex: &Http2Exchange) -> bool {
    let grpc_type = |h: &Head| h.value("content-type").is_some_and(|v| v.starts_with("application/grpc"));
    if grpc_type(&ex.request) || ex.response.as_ref().is_some_and(grpc_type) {
        return true;
    }
    let status = |h: &Head| h.value("grpc-status").is_some();
    if ex.trailers.as_ref().is_some_and(status) || ex.response.as_ref().is_some_and(status) {
        return true;
    }
    ex.request.value("content-type").is_none()
        && ex.request.unknown > 0
        && ex.request.value(":method").is_none_or(|m| m == "POST")
        && ex.request.value(":path").and_then(grpc_method).is_some()
}

/// `package.Service/Method` of a gRPC path `/package.Service/Method`.
fn grpc_method(path: &str) -> Option<&str> {
    let full = path.strip_prefix('/')?;
    let (service, method) = full.split_once('/')?;
    let ok =
        |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-');
    (ok(service) && ok(method)).then_some(full)
}

/// The gRPC status name of an exchange, when one is known.
fn grpc_status(ex: &Http2Exchange) -> Option<String> {
    let from = |h: &Head| h.value("grpc-status").map(|v| v.trim().to_owned());
    let code = ex.trailers.as_ref().and_then(from).or_else(|| ex.response.as_ref().and_then(from));
    if let Some(code) = code {
        return Some(match code.parse::<usize>().ok().and_then(|n| GRPC_CODES.get(n)) {
            Some(name) => (*name).to_owned(),
            None => code.chars().take(16).collect(),
        });
    }
    // No grpc-status: an HTTP status other than 200 maps to a code (gRPC's HTTP-to-gRPC mapping).
    let http = ex.response.as_ref().and_then(|h| h.value(":status")).and_then(|s| s.parse::<u16>().ok());
    match http {
        Some(400) => Some("INTERNAL".into()),
        Some(401) => Some("UNAUTHENTICATED".into()),
        Some(403) => Some("PERMISSION_DENIED".into()),
        Some(404) => Some("UNIMPLEMENTED".into()),
        Some(429 | 502 | 503 | 504) => Some("UNAVAILABLE".into()),
        Some(s) if s != 200 => Some("UNKNOWN".into()),
        _ if ex.reset == Some(CANCEL) && past_deadline(ex) => Some("DEADLINE_EXCEEDED".into()),
        _ if ex.reset == Some(CANCEL) => Some("CANCELLED".into()),
        _ => None,
    }
}

/// The stream was reset once the request's `grpc-timeout` had run out (within a twentieth of
/// it, at least 2 ms: the client computes the header a little before it writes it): gRPC
/// clients (grpc-go, grpc-js, C-core) cancel a call whose deadline passed with `RST_STREAM`
/// `CANCEL`, and report `DEADLINE_EXCEEDED`.
fn past_deadline(ex: &Http2Exchange) -> bool {
    let Some(timeout) = ex.request.value("grpc-timeout").and_then(grpc_timeout_ns) else {
        return false;
    };
    let slack = (timeout / 20).max(2_000_000);
    ex.response_end_ns.saturating_sub(ex.request_start_ns).saturating_add(slack) >= timeout
}

/// A `grpc-timeout` value (gRPC over HTTP/2: at most 8 digits and a unit `H`, `M`, `S`, `m`,
/// `u`, `n`) in nanoseconds.
pub(super) fn grpc_timeout_ns(v: &str) -> Option<u64> {
    let v = v.trim();
    let (digits, unit) = v.split_at_checked(v.len().checked_sub(1)?)?;
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    let ns_per = match unit {
        "H" => 3_600_000_000_000,
        "M" => 60_000_000_000,
        "S" => 1_000_000_000,
        "m" => 1_000_000,
        "u" => 1_000,
        "n" => 1,
        _ => return None,
    };
    n.checked_mul(ns_per)
}

/// `(server.address, server.port)`: the request's `:authority`, else the connection's server end.
fn server_address(ex: &Http2Exchange, conn: &Endpoints) -> (CompactString, u16) {
    let server_end = match ex.side {
        Side::Client => conn.remote,
        Side::Server => conn.local,
    };
    if let Some(authority) = ex.request.value(":authority").filter(|a| !a.is_empty()) {
        let authority = authority.rsplit('@').next().unwrap_or(authority);
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => match p.parse::<u16>() {
                Ok(p) => (h, p),
                Err(_) => (authority, server_end.port()),
            },
            _ => (authority, server_end.port()),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        return (CompactString::from(truncate(host, 256)), port);
    }
    (ip_string(server_end.ip()), server_end.port())
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn grpc_span(ex: &Http2Exchange, conn: &Endpoints, resource: &Arc<Resource>, clock: &Clock) -> Span {
    let path = ex.request.value(":path");
    let method = path.and_then(grpc_method);
    let mut attrs = Vec::with_capacity(16);
    attrs.push(Attribute::new(attr::RPC_SYSTEM_NAME, attr::GRPC));
    match (method, path) {
        (Some(m), _) => attrs.push(Attribute::new(attr::RPC_METHOD, m)),
        (None, Some(p)) => {
            attrs.push(Attribute::new(attr::RPC_METHOD, attr::OTHER));
            attrs.push(Attribute::new(attr::RPC_METHOD_ORIGINAL, truncate(p, MAX_ATTR_LEN)));
        }
        (None, None) => attrs.push(Attribute::new(attr::RPC_METHOD, attr::OTHER)),
    }
    let status = grpc_status(ex);
    if let Some(s) = &status {
        attrs.push(Attribute::new(attr::RPC_RESPONSE_STATUS_CODE, s.as_str()));
    }
    let (host, port) = server_address(ex, conn);
    attrs.push(Attribute::new(attr::SERVER_ADDRESS, host));
    attrs.push(Attribute::new(attr::SERVER_PORT, i64::from(port)));
    if ex.side == Side::Server {
        attrs.push(Attribute::new(attr::CLIENT_ADDRESS, ip_string(conn.remote.ip())));
    }
    attrs.push(Attribute::new(attr::NETWORK_PROTOCOL_NAME, "http"));
    attrs.push(Attribute::new(attr::NETWORK_PROTOCOL_VERSION, "2"));
    attrs.push(Attribute::new(attr::NETWORK_PEER_ADDRESS, ip_string(conn.remote.ip())));
    attrs.push(Attribute::new(attr::NETWORK_PEER_PORT, i64::from(conn.remote.port())));
    attrs.push(Attribute::new(attr::NETWORK_LOCAL_ADDRESS, ip_string(conn.local.ip())));
    attrs.push(Attribute::new(attr::NETWORK_LOCAL_PORT, i64::from(conn.local.port())));
    if let Some(ua) = ex.request.value("user-agent") {
        attrs.push(Attribute::new(attr::USER_AGENT_ORIGINAL, truncate(ua, MAX_ATTR_LEN)));
    }
    let error_type = match &status {
        Some(s) => match ex.side {
            Side::Client => (s != "OK").then(|| s.clone()),
            Side::Server => GRPC_SERVER_ERRORS.contains(&s.as_str()).then(|| s.clone()),
        },
        None => ex.reset.map(h2_error_name),
    };
    let is_error = error_type.is_some();
    if let Some(t) = error_type {
        attrs.push(Attribute::new(attr::ERROR_TYPE, t));
    }
    let parent = ex.request.value("traceparent").and_then(parse_traceparent);
    attrs.push(Attribute::new(attr::ZTRACE_LINK, if parent.is_some() { "header" } else { "none" }));
    let start_unix_nano = clock.to_unix(ex.request_start_ns);
    Span {
        trace_id: parent.map_or_else(new_trace_id, |p| p.trace_id),
        span_id: new_span_id(),
        parent_span_id: parent.map(|p| p.parent_id),
        name: method.unwrap_or(attr::GRPC).to_owned(),
        kind: match ex.side {
            Side::Server => SpanKind::Server,
            Side::Client => SpanKind::Client,
        },
        start_unix_nano,
        end_unix_nano: clock.to_unix(ex.response_end_ns).max(start_unix_nano),
        status: if is_error { StatusCode::Error } else { StatusCode::Unset },
        status_message: None,
        attributes: attrs,
        resource: resource.clone(),
    }
}

/// A plain HTTP/2 request: the HTTP/1 rules on the same request, version `2`. An unknown method
/// is `_OTHER` and names the span `HTTP`; an unknown path leaves the route out of the name.
fn http_span_of(ex: &Http2Exchange, conn: &Endpoints, resource: &Arc<Resource>, clock: &Clock) -> Span {
    let method = ex.request.value(":method");
    let path = ex.request.value(":path");
    let mut pairs: Vec<(&str, &str)> = Vec::new();
    if let Some(a) = ex.request.value(":authority") {
        pairs.push(("host", a));
    }
    pairs.extend(ex.request.regular().filter(|(n, _)| *n != "host").take(32));
    let headers = Headers::from_pairs(pairs);
    let response = ex.response.as_ref().and_then(|h| {
        let status = h.value(":status")?.parse::<u16>().ok()?;
        Some(HttpResponse {
            status,
            version_minor: 0,
            headers: Headers::from_pairs(h.regular().take(32)),
            body_len: ex.response_body_len,
        })
    });
    let h1 = HttpExchange {
        side: ex.side,
        request: HttpRequest {
            method: method.unwrap_or(attr::OTHER).to_owned(),
            // `*`: no path, so no route and no url.path.
            target: path.unwrap_or("*").to_owned(),
            version_minor: 0,
            headers,
            body_len: ex.request_body_len,
        },
        response,
        request_start_ns: ex.request_start_ns,
        request_end_ns: ex.request_end_ns,
        response_start_ns: ex.response_start_ns,
        response_end_ns: ex.response_end_ns,
        request_tid: ex.request_tid,
        response_tid: ex.response_tid,
    };
    let mut span = http_span(&h1, conn, resource, clock);
    for a in &mut span.attributes {
        if a.key == attr::NETWORK_PROTOCOL_VERSION {
            a.value = AttrValue::from("2");
        }
    }
    if method.is_none() {
        span.name = "HTTP".to_owned();
        span.attributes.retain(|a| a.key != attr::HTTP_REQUEST_METHOD_ORIGINAL);
    }
    if let (Some(code), None) = (ex.reset, &ex.response) {
        span.status = StatusCode::Error;
        span.attributes.retain(|a| a.key != attr::ERROR_TYPE);
        span.attributes.push(Attribute::new(attr::ERROR_TYPE, h2_error_name(code)));
    }
    span
}
