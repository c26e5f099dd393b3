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

use std::net::{IpAddr, SocketAddr};

use crate::{
    discovery::ProcessInfo,
    protocols::{
        http1::{HttpExchange, HttpRequest},
        Side,
    },
};

use super::{clock::Clock, new_span_id, new_trace_id, Attribute, Span, SpanKind, StatusCode};

/// What replaces a sensitive value.
pub const REDACTED: &str = "REDACTED";

/// Path segments kept in a route; more are shown as one `...` segment.
pub const MAX_ROUTE_SEGMENTS: usize = 8;

/// Longest path segment kept in a route; a longer one becomes `{id}`.
pub const MAX_SEGMENT_LEN: usize = 48;

/// Longest string attribute taken from the wire (path, query, user agent), in bytes.
const MAX_ATTR_LEN: usize = 2048;

/// Longest `http.request.method_original` kept, in bytes.
const MAX_METHOD_LEN: usize = 32;

/// The connection an exchange travelled on, as the traced process sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnInfo {
    /// The traced process's own address.
    pub local: SocketAddr,
    /// The peer's address (IPv4-mapped IPv6 already shown as IPv4 by the caller).
    pub remote: SocketAddr,
    /// The exchange was read as plaintext at a TLS library: the scheme is `https`.
    pub tls: bool,
}

/// A W3C `traceparent` header's fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: [u8; 16],
    /// The span id of the caller's span: the parent of the span built from this request.
    pub parent_id: [u8; 8],
    pub flags: u8,
}

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
pub fn http_span(ex: &HttpExchange, conn: &ConnInfo, process: &ProcessInfo, clock: &Clock) -> Span {
    let req = &ex.request;
    let target = Target::parse(&req.target);
    let route = target.path.map(infer_route);

    let known_method = is_known_method(&req.method);
    let name_method = if known_method { req.method.as_str() } else { "HTTP" };
    let name = match &route {
        Some(route) => format!("{name_method} {route}"),
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
    let status = ex.response.status;
    attrs.push(Attribute::new("http.response.status_code", i64::from(status)));
    attrs.push(Attribute::new("network.protocol.version", format!("1.{}", req.version_minor)));
    attrs.push(Attribute::new("server.address", server_host));
    attrs.push(Attribute::new("server.port", i64::from(server_port)));
    if ex.side == Side::Server {
        let client = forwarded_client(req).unwrap_or_else(|| super::ip_string(conn.remote.ip()));
        attrs.push(Attribute::new("client.address", client));
    }
    attrs.push(Attribute::new("network.peer.address", super::ip_string(conn.remote.ip())));
    attrs.push(Attribute::new("network.peer.port", i64::from(conn.remote.port())));
    attrs.push(Attribute::new("network.local.address", super::ip_string(conn.local.ip())));
    attrs.push(Attribute::new("network.local.port", i64::from(conn.local.port())));
    if let Some(ua) = header(req, "user-agent") {
        attrs.push(Attribute::new("user_agent.original", truncate(ua, MAX_ATTR_LEN)));
    }
    if req.body_len > 0 {
        attrs.push(Attribute::new("http.request.body.size", saturating_i64(req.body_len)));
    }
    if ex.response.body_len > 0 {
        attrs.push(Attribute::new("http.response.body.size", saturating_i64(ex.response.body_len)));
    }

    let is_error = match ex.side {
        Side::Server => status >= 500,
        Side::Client => status >= 400,
    };
    if is_error {
        attrs.push(Attribute::new("error.type", status.to_string()));
    }

    let parent = single_header(req, "traceparent").and_then(parse_traceparent);
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
        resource: process.resource.clone(),
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
    conn: &ConnInfo,
) -> (String, u16) {
    let socket = match side {
        Side::Client => conn.remote,
        Side::Server => conn.local,
    };
    let authority = target.authority.or_else(|| header(req, "host"));
    if let Some((host, port)) = authority.and_then(split_host_port) {
        return (host.to_owned(), port.unwrap_or(socket.port()));
    }
    (super::ip_string(socket.ip()), socket.port())
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
    let host = if host.contains(':') { format!("[{host}]") } else { host.to_owned() };
    let mut url = if port == default_port {
        format!("{scheme}://{host}")
    } else {
        format!("{scheme}://{host}:{port}")
    };
    url.push_str(target.path.unwrap_or(""));
    if let Some(q) = target.query.filter(|q| !q.is_empty()) {
        url.push('?');
        url.push_str(&redact_query(q));
    }
    truncate(&url, MAX_ATTR_LEN)
}

/// The original client behind proxies: the first `X-Forwarded-For` entry, else the first
/// `for=` of `Forwarded` (RFC 7239), without port or brackets.
fn forwarded_client(req: &HttpRequest) -> Option<String> {
    let raw = if let Some(xff) = header(req, "x-forwarded-for") {
        xff.split(',').next()?.trim()
    } else {
        let fwd = header(req, "forwarded")?;
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
        .then(|| host.to_owned())
}

/// The first value of a header (names are lower case).
fn header<'a>(req: &'a HttpRequest, name: &str) -> Option<&'a str> {
    req.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.trim())
}

/// The value of a header that must appear exactly once.
fn single_header<'a>(req: &'a HttpRequest, name: &str) -> Option<&'a str> {
    let mut values = req.headers.iter().filter(|(n, _)| n == name);
    let first = values.next()?;
    values.next().is_none().then(|| first.1.trim())
}

/// The `traceparent` header of the request head at the start of `bytes` (the first bytes of a
/// request, as read or written), if its header lines seen there hold exactly one valid one.
/// Looks no further than the end of the head or of `bytes`; never allocates.
pub fn find_traceparent(bytes: &[u8]) -> Option<TraceParent> {
    const NAME: &[u8] = b"traceparent:";
    let head_end = bytes.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or(bytes.len());
    let mut found = None;
    // Skip the request line; a header line cut at the end of `bytes` is not trusted.
    let mut lines = bytes[..head_end].split(|&b| b == b'\n').skip(1).peekable();
    while let Some(line) = lines.next() {
        if lines.peek().is_none() && head_end == bytes.len() {
            break;
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

/// Parses a W3C Trace Context `traceparent` header (`00-<32 hex>-<16 hex>-<2 hex>`).
///
/// Rejects version `ff`, upper-case hex, all-zero ids and, for version `00`, trailing data; a
/// later version may carry more fields after a `-`, as the specification allows.
pub fn parse_traceparent(value: &str) -> Option<TraceParent> {
    let v = value.trim().as_bytes();
    if v.len() < 55 || v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let version = hex_byte(&v[0..2])?;
    if version == 0xff || (version == 0 && v.len() != 55) || (v.len() > 55 && v[55] != b'-') {
        return None;
    }
    let mut trace_id = [0u8; 16];
    for (i, b) in trace_id.iter_mut().enumerate() {
        *b = hex_byte(&v[3 + 2 * i..5 + 2 * i])?;
    }
    let mut parent_id = [0u8; 8];
    for (i, b) in parent_id.iter_mut().enumerate() {
        *b = hex_byte(&v[36 + 2 * i..38 + 2 * i])?;
    }
    let flags = hex_byte(&v[53..55])?;
    if trace_id == [0; 16] || parent_id == [0; 8] {
        return None;
    }
    Some(TraceParent { trace_id, parent_id, flags })
}

/// Two lower-case hex digits.
fn hex_byte(two: &[u8]) -> Option<u8> {
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    Some(digit(*two.first()?)? << 4 | digit(*two.get(1)?)?)
}

/// True when a query parameter name is sensitive: one of its words (split at `-`, `_`, `.`
/// and lower-to-upper case changes) contains `token`, `secret`, `password`, `passwd`,
/// `signature`, `session` or `credential`, starts with `auth`, or is `key`, `apikey`,
/// `accesskey`, `sig`, `code`, `sid` or `pwd` (the whole name is also tried as one word).
pub fn is_sensitive_query_key(key: &str) -> bool {
    const CONTAINS: [&str; 7] =
        ["token", "secret", "password", "passwd", "signature", "session", "credential"];
    const EXACT: [&str; 7] = ["key", "apikey", "accesskey", "sig", "code", "sid", "pwd"];
    let mut words: Vec<String> = Vec::new();
    let mut current = String::new();
    let mut prev_lower = false;
    for c in key.chars() {
        let boundary = matches!(c, '-' | '_' | '.' | '[' | ']') || (c.is_uppercase() && prev_lower);
        if boundary && !current.is_empty() {
            words.push(std::mem::take(&mut current));
        }
        prev_lower = c.is_lowercase() || c.is_ascii_digit();
        if !matches!(c, '-' | '_' | '.' | '[' | ']') {
            current.extend(c.to_lowercase());
        }
    }
    if !current.is_empty() {
        words.push(current);
    }
    let whole: String = words.concat();
    words.iter().chain(std::iter::once(&whole)).any(|w| {
        CONTAINS.iter().any(|p| w.contains(p))
            || w.starts_with("auth")
            || EXACT.contains(&w.as_str())
    })
}

/// The query string with the values of sensitive parameters (see [`is_sensitive_query_key`])
/// replaced by `REDACTED`; everything else kept as sent.
pub fn redact_query(query: &str) -> String {
    query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((k, _)) if is_sensitive_query_key(&percent_decode_lossy(k)) => {
                format!("{k}={REDACTED}")
            }
            _ => pair.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// Decodes `%XX` escapes (for matching names only); invalid escapes are kept.
fn percent_decode_lossy(s: &str) -> String {
    if !s.contains('%') {
        return s.to_owned();
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let escaped = (b[i] == b'%')
            .then(|| b.get(i + 1..i + 3))
            .flatten()
            .filter(|h| h.iter().all(u8::is_ascii_hexdigit))
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match escaped {
            Some(byte) => {
                out.push(byte);
                i += 3;
            }
            None => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A low-cardinality route for a path: query and fragment dropped, `;` parameters dropped,
/// identifier-like segments replaced by placeholders, at most [`MAX_ROUTE_SEGMENTS`] segments.
///
/// Placeholders: `{id}` for numbers, UUIDs, hex strings of 8 or more digits with a decimal digit,
/// IPv4 addresses, opaque tokens (long strings mixing letters and digits or cases, as base64,
/// ULIDs and nano ids do) and segments longer than [`MAX_SEGMENT_LEN`]; `{date}` for ISO dates;
/// `{email}` for e-mail addresses. A file name keeps its extension (`/img/42.png` →
/// `/img/{id}.png`).
pub fn infer_route(path: &str) -> String {
    let path = path.split(['?', '#']).next().unwrap_or(path);
    let path = path.strip_prefix('/').unwrap_or(path);
    let mut route = String::with_capacity(path.len().min(256) + 1);
    for (i, segment) in path.split('/').enumerate() {
        if i == MAX_ROUTE_SEGMENTS {
            route.push_str("/...");
            break;
        }
        route.push('/');
        route.push_str(&route_segment(segment));
    }
    route
}

/// One segment of a route.
fn route_segment(segment: &str) -> String {
    let segment = segment.split(';').next().unwrap_or(segment);
    if segment.len() > MAX_SEGMENT_LEN {
        return "{id}".to_owned();
    }
    if is_email(segment) {
        return "{email}".to_owned();
    }
    // A file name: classify the parts of its stem, keep the extension.
    if let Some((stem, ext)) = segment.rsplit_once('.') {
        let is_ext = (1..=5).contains(&ext.len())
            && ext.bytes().all(|b| b.is_ascii_alphanumeric())
            && ext.bytes().any(|b| b.is_ascii_alphabetic());
        if is_ext && !stem.is_empty() {
            let parts: Vec<&str> =
                stem.split('.').map(|part| placeholder(part).unwrap_or(part)).collect();
            return format!("{}.{ext}", parts.join("."));
        }
    }
    placeholder(segment).unwrap_or(segment).to_owned()
}

/// The placeholder for an identifier-like segment, `None` for an ordinary word.
fn placeholder(s: &str) -> Option<&'static str> {
    if s.is_empty() {
        return None;
    }
    if is_email(s) {
        return Some("{email}");
    }
    if is_date(s) {
        return Some("{date}");
    }
    let id = s.bytes().all(|b| b.is_ascii_digit())
        || is_uuid(s)
        || is_hex_id(s)
        || is_ipv4(s)
        || is_opaque(s);
    id.then_some("{id}")
}

fn is_email(s: &str) -> bool {
    let s = s.replace("%40", "@");
    match s.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && !domain.contains('@')
                && domain.contains('.')
                && !domain.starts_with('.')
        }
        None => false,
    }
}

/// `YYYY-MM-DD`, optionally followed by a time (`T12:00:00Z`, `%3A` for `:`).
fn is_date(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() >= 10
        && b[..4].iter().all(u8::is_ascii_digit)
        && b[4] == b'-'
        && b[5..7].iter().all(u8::is_ascii_digit)
        && b[7] == b'-'
        && b[8..10].iter().all(u8::is_ascii_digit)
        && b[10..].iter().all(|c| c.is_ascii_digit() || b"T:.Z+-%3Aa".contains(c))
}

fn is_uuid(s: &str) -> bool {
    s.len() == 36
        && s.char_indices().all(|(i, c)| {
            if matches!(i, 8 | 13 | 18 | 23) {
                c == '-'
            } else {
                c.is_ascii_hexdigit()
            }
        })
}

/// At least 8 hex digits, one of them a decimal digit (so words like `deadbeef` or `facade`
/// stay), optionally after `0x`.
fn is_hex_id(s: &str) -> bool {
    let s = s.strip_prefix("0x").unwrap_or(s);
    s.len() >= 8
        && s.bytes().all(|b| b.is_ascii_hexdigit())
        && s.bytes().any(|b| b.is_ascii_digit())
}

fn is_ipv4(s: &str) -> bool {
    s.parse::<std::net::Ipv4Addr>().is_ok()
}

/// An opaque token: at least 8 URL-safe characters with a letter, that words, `camelCase`
/// names and slugs (`post-2024`, `oauth2Callback`) do not look like: several digits mixed with
/// the letters; or frequent changes between lower case, upper case and digits; or, from 16
/// characters, lower case, upper case and digits all mixed, upper and lower case in even
/// proportions, or mixed case with few vowels (base64, base62, ULIDs, nano ids).
fn is_opaque(s: &str) -> bool {
    if s.len() < 8 || !s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_~.=+%".contains(&b)) {
        return false;
    }
    let count = |f: fn(&u8) -> bool| s.bytes().filter(&f).count();
    let (digits, upper, lower) =
        (count(u8::is_ascii_digit), count(u8::is_ascii_uppercase), count(u8::is_ascii_lowercase));
    let letters = upper + lower;
    if letters == 0 {
        return false;
    }
    let flips = s
        .as_bytes()
        .windows(2)
        .filter(|w| {
            let (a, b) = (w[0], w[1]);
            (a.is_ascii_lowercase() && b.is_ascii_uppercase())
                || (a.is_ascii_alphabetic() && b.is_ascii_digit())
                || (a.is_ascii_digit() && b.is_ascii_alphabetic())
        })
        .count();
    let long = s.len() >= 16;
    (digits >= 3 && (flips >= 3 || digits >= letters))
        || (s.len() >= 10 && flips * 3 >= digits + letters)
        || (long && digits > 0 && upper > 0 && lower > 0 && flips >= 4)
        || (long && upper * 10 >= letters * 3 && lower * 10 >= letters * 3 && flips >= 3)
        || (long && upper >= 2 && lower >= 2 && vowels(s) * 5 < letters)
        || (long
            && upper * 4 >= letters
            && lower * 4 >= letters
            && flips >= 3
            && vowels(s) * 10 < letters * 3)
        || (long
            && digits > 0
            && upper > 0
            && lower > 0
            && flips >= 3
            && vowels(s) * 10 < letters * 3)
}

/// The vowels among the letters (words have about two in five; random letters one in five).
fn vowels(s: &str) -> usize {
    s.bytes().filter(|b| b"aeiouAEIOU".contains(b)).count()
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
    use std::{collections::HashSet, sync::Arc};

    use super::*;
    use crate::{
        discovery::ProcessInfo,
        protocols::http1::HttpResponse,
        spans::{hex, AttrValue, Resource},
    };

    #[test]
    fn infers_routes() {
        let cases = [
            ("/", "/"),
            ("/orders/42", "/orders/{id}"),
            ("/orders/42/items/7?full=1", "/orders/{id}/items/{id}"),
            ("/users/550e8400-e29b-41d4-a716-446655440000/profile", "/users/{id}/profile"),
            ("/blobs/5f2b9c0e8d1a4b3c", "/blobs/{id}"),
            ("/objects/507f1f77bcf86cd799439011", "/objects/{id}"),
            ("/commits/0x1a2b3c4d5e", "/commits/{id}"),
            ("/colors/deadbeef", "/colors/deadbeef"),
            ("/api/v1/health", "/api/v1/health"),
            ("/api/v2beta1/things", "/api/v2beta1/things"),
            ("/oauth2callback", "/oauth2callback"),
            ("/getUserById", "/getUserById"),
            ("/getUserByIdAndName", "/getUserByIdAndName"),
            ("/HTTPServerConfig", "/HTTPServerConfig"),
            ("/XMLHttpRequestFactory", "/XMLHttpRequestFactory"),
            ("/oauth2CallbackHandler", "/oauth2CallbackHandler"),
            ("/icons/apple-touch-icon-180x180.png", "/icons/apple-touch-icon-180x180.png"),
            ("/favicon.ico", "/favicon.ico"),
            ("/blog/my-post-2024", "/blog/my-post-2024"),
            ("/tokens/eyJhbGciOiJIUzI1NiJ9", "/tokens/{id}"),
            ("/ids/01ARZ3NDEKTSV4RRFFQ69G5FAV", "/ids/{id}"),
            ("/n/V1StGXR8_Z5jdHi6B-myT", "/n/{id}"),
            ("/c/cus_NffrFeUfNV2Hib", "/c/{id}"),
            ("/r/aZxQpLmNrTbY", "/r/{id}"),
            ("/users/bob@example.com", "/users/{email}"),
            ("/users/bob%40example.com/orders", "/users/{email}/orders"),
            ("/reports/2024-05-01", "/reports/{date}"),
            ("/events/2024-05-01T12:30:00Z", "/events/{date}"),
            ("/hosts/10.0.0.12/metrics", "/hosts/{id}/metrics"),
            ("/img/12345.png", "/img/{id}.png"),
            ("/static/app.3f9a8b7c.js", "/static/app.{id}.js"),
            ("/static/main.css", "/static/main.css"),
            ("/download/v1.2", "/download/v1.2"),
            ("/cart;jsessionid=ABC123DEF456", "/cart"),
            ("/a/", "/a/"),
            ("//x", "//x"),
            ("/a/b/c/d/e/f/g/h/i/j", "/a/b/c/d/e/f/g/h/..."),
            ("/files/#frag", "/files/"),
        ];
        for (path, want) in cases {
            assert_eq!(infer_route(path), want, "{path}");
        }
        let long = format!("/x/{}", "a".repeat(MAX_SEGMENT_LEN + 1));
        assert_eq!(infer_route(&long), "/x/{id}");
    }

    #[test]
    fn routes_stay_few_with_many_ids() {
        let mut routes = HashSet::new();
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        const B62: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
        for i in 0..2000u64 {
            let (a, b) = (next(), next());
            let uuid = format!(
                "{:08x}-{:04x}-4{:03x}-a{:03x}-{:012x}",
                a >> 32,
                a & 0xffff,
                (a >> 16) & 0xfff,
                b & 0xfff,
                b >> 16
            );
            let token: String = (0..22).map(|_| B62[(next() % 62) as usize] as char).collect();
            routes.insert(infer_route(&format!("/orders/{}", a % 1_000_000)));
            routes.insert(infer_route(&format!("/users/{uuid}/cart?session={i}")));
            routes.insert(infer_route(&format!("/blobs/{:016x}{:016x}", a, b)));
            routes.insert(infer_route(&format!("/share/{token}")));
            routes.insert(infer_route(&format!(
                "/day/2024-01-{:02}/user/{}@example.com",
                i % 28 + 1,
                a % 1000
            )));
        }
        let want: HashSet<String> = [
            "/orders/{id}",
            "/users/{id}/cart",
            "/blobs/{id}",
            "/share/{id}",
            "/day/{date}/user/{email}",
        ]
        .into_iter()
        .map(str::to_owned)
        .collect();
        assert_eq!(routes, want);
    }

    #[test]
    fn redacts_sensitive_query_values() {
        let cases = [
            ("a=1&b=2", "a=1&b=2"),
            ("access_token=abc&page=2", "access_token=REDACTED&page=2"),
            ("apiKey=abc", "apiKey=REDACTED"),
            ("api_key=abc", "api_key=REDACTED"),
            ("key=abc", "key=REDACTED"),
            ("X-Amz-Signature=abc&X-Amz-Date=1", "X-Amz-Signature=REDACTED&X-Amz-Date=1"),
            ("AWSAccessKeyId=AKIA&Expires=1", "AWSAccessKeyId=REDACTED&Expires=1"),
            ("sig=abc", "sig=REDACTED"),
            ("code=xyz&state=s", "code=REDACTED&state=s"),
            ("sessionid=1", "sessionid=REDACTED"),
            ("client_secret=s&password=p", "client_secret=REDACTED&password=REDACTED"),
            ("authorization=x", "authorization=REDACTED"),
            ("monkey=banana&zipcode=1", "monkey=banana&zipcode=1"),
            ("to%6Ben=x", "to%6Ben=REDACTED"),
            ("token", "token"),
            ("&&x=1&", "&&x=1&"),
        ];
        for (q, want) in cases {
            assert_eq!(redact_query(q), want, "{q}");
        }
    }

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
    fn parses_traceparent() {
        let tp = parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        assert_eq!(
            tp.map(|t| (hex(&t.trace_id), hex(&t.parent_id), t.flags)),
            Some(("4bf92f3577b34da6a3ce929d0e0e4736".to_owned(), "00f067aa0ba902b7".to_owned(), 1))
        );
        assert!(parse_traceparent(" 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00 ")
            .is_some());
        // A future version may add fields.
        assert!(parse_traceparent("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra")
            .is_some());
        let invalid = [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01extra",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            "0é-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ];
        for v in invalid {
            assert_eq!(parse_traceparent(v), None, "{v}");
        }
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

    fn process() -> ProcessInfo {
        let mut info = ProcessInfo::from_comm(4242, "orders", "box");
        info.resource =
            Arc::new(Resource { service_name: "orders".into(), attributes: Vec::new() });
        info
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
                headers: headers.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
                body_len: 0,
            },
            response: HttpResponse { status, version_minor: 1, headers: Vec::new(), body_len: 512 },
            request_start_ns: 1_000,
            request_end_ns: 2_000,
            response_start_ns: 5_000,
            response_end_ns: 9_000,
            request_tid: 10,
            response_tid: 11,
        }
    }

    fn conn(local: &str, remote: &str) -> ConnInfo {
        ConnInfo {
            local: local.parse().expect("test address"),
            remote: remote.parse().expect("test address"),
            tls: false,
        }
    }

    fn attrs(span: &Span) -> Vec<(&'static str, AttrValue)> {
        span.attributes.iter().map(|a| (a.key, a.value.clone())).collect()
    }

    fn s(v: &str) -> AttrValue {
        AttrValue::Str(v.to_owned())
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
