//! Spans: the agent's own span model, and the rules that turn protocol exchanges into spans.
//!
//! A [`Span`] is what every sink (OTLP export, `--print`, the store) receives. It is built from
//! a protocol exchange (see `protocols/`), the connection it travelled on (see `conn/`) and the
//! identity of the process that made it (see `discovery/`). This module does no I/O.

pub mod clock;
pub mod json;
#[doc(hidden)]
pub mod testing;

use compact_str::CompactString;
use std::sync::Arc;

/// OpenTelemetry span kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SpanKind {
    Server,
    Client,
    Internal,
    Producer,
    Consumer,
}

impl SpanKind {
    /// The name used in `--print=json` and the viewer API.
    pub fn as_str(self) -> &'static str {
        match self {
            SpanKind::Server => "server",
            SpanKind::Client => "client",
            SpanKind::Internal => "internal",
            SpanKind::Producer => "producer",
            SpanKind::Consumer => "consumer",
        }
    }
}

/// OpenTelemetry status code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StatusCode {
    Unset,
    Ok,
    Error,
}

impl StatusCode {
    pub fn as_str(self) -> &'static str {
        match self {
            StatusCode::Unset => "unset",
            StatusCode::Ok => "ok",
            StatusCode::Error => "error",
        }
    }
}

/// An attribute value (the subset of OpenTelemetry's `AnyValue` that ztrace produces).
///
/// Text is a [`CompactString`]: up to 24 bytes (a method, an address, a route, most values a
/// span has) live inline, so building a span's dozen text attributes allocates for the long
/// ones only.
#[derive(Clone, Debug, PartialEq)]
pub enum AttrValue {
    Str(CompactString),
    Int(i64),
    Bool(bool),
    Double(f64),
}

impl From<String> for AttrValue {
    fn from(v: String) -> Self {
        AttrValue::Str(CompactString::from(v))
    }
}
impl From<&str> for AttrValue {
    fn from(v: &str) -> Self {
        AttrValue::Str(CompactString::from(v))
    }
}
impl From<CompactString> for AttrValue {
    fn from(v: CompactString) -> Self {
        AttrValue::Str(v)
    }
}
impl From<i64> for AttrValue {
    fn from(v: i64) -> Self {
        AttrValue::Int(v)
    }
}
impl From<bool> for AttrValue {
    fn from(v: bool) -> Self {
        AttrValue::Bool(v)
    }
}

/// One attribute: a semantic-convention key and its value.
#[derive(Clone, Debug, PartialEq)]
pub struct Attribute {
    pub key: &'static str,
    pub value: AttrValue,
}

impl Attribute {
    pub fn new(key: &'static str, value: impl Into<AttrValue>) -> Self {
        Attribute {
            key,
            value: value.into(),
        }
    }
}

/// The resource of a traced process: who emitted the span.
///
/// Shared (`Arc`) by every span of the process; `service_name` is also present in
/// `attributes` as `service.name`.
#[derive(Clone, Debug, PartialEq)]
pub struct Resource {
    pub service_name: String,
    /// `service.name`, `process.pid`, `process.executable.name`, ... in a stable order.
    pub attributes: Vec<(String, AttrValue)>,
}

/// A finished span.
#[derive(Clone, Debug)]
pub struct Span {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub parent_span_id: Option<[u8; 8]>,
    pub name: String,
    pub kind: SpanKind,
    pub start_unix_nano: u64,
    pub end_unix_nano: u64,
    pub status: StatusCode,
    /// Status message (set only with `StatusCode::Error`, where there is one).
    pub status_message: Option<String>,
    pub attributes: Vec<Attribute>,
    pub resource: Arc<Resource>,
}

/// Lower-case hex of a byte string (trace and span ids).
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    s
}

/// A UUID in text: `8-4-4-4-12` hex digits.
pub fn is_uuid(s: &str) -> bool {
    s.len() == 36
        && s.char_indices().all(|(i, c)| {
            if matches!(i, 8 | 13 | 18 | 23) {
                c == '-'
            } else {
                c.is_ascii_hexdigit()
            }
        })
}

thread_local! {
    /// Per-thread id generator: xoshiro256++ seeded from the operating system's entropy (through
    /// `rand`), so ids are unpredictable across runs and threads, at a few nanoseconds each
    /// (the cryptographic generator cost 3% of the agent's time at 100k spans/s).
    static IDS: std::cell::Cell<[u64; 4]> = std::cell::Cell::new(loop {
        let seed: [u64; 4] = rand::random();
        if seed != [0; 4] {
            break seed;
        }
    });
}

fn next_random() -> u64 {
    IDS.with(|cell| {
        let mut s = cell.get();
        let result = s[0].wrapping_add(s[3]).rotate_left(23).wrapping_add(s[0]);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        cell.set(s);
        result
    })
}

/// Random, non-zero trace and span ids (W3C trace context asks for random, non-zero ids).
pub fn new_trace_id() -> [u8; 16] {
    loop {
        let (a, b) = (next_random(), next_random());
        if a | b != 0 {
            let mut id = [0; 16];
            id[..8].copy_from_slice(&a.to_le_bytes());
            id[8..].copy_from_slice(&b.to_le_bytes());
            return id;
        }
    }
}

pub fn new_span_id() -> [u8; 8] {
    loop {
        let id = next_random();
        if id != 0 {
            return id.to_le_bytes();
        }
    }
}

/// The text form of an address, as `IpAddr`'s `Display` writes it, without going through the
/// formatting machinery for IPv4 (three of these per span showed as 11% of the agent's time),
/// and without an allocation (an IPv4 address fits in a `CompactString` inline).
pub fn ip_string(ip: std::net::IpAddr) -> CompactString {
    match ip {
        std::net::IpAddr::V4(v4) => {
            let mut text = [0u8; 15];
            let mut len = 0;
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    text[len] = b'.';
                    len += 1;
                }
                if octet >= 100 {
                    text[len] = b'0' + octet / 100;
                    len += 1;
                }
                if octet >= 10 {
                    text[len] = b'0' + octet / 10 % 10;
                    len += 1;
                }
                text[len] = b'0' + octet % 10;
                len += 1;
            }
            // Only ASCII digits and dots were written.
            CompactString::from_utf8(&text[..len]).unwrap_or_default()
        }
        std::net::IpAddr::V6(v6) => compact_str::format_compact!("{v6}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_strings_match_display() {
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "10.20.30.40",
            "255.255.255.255",
            "1.10.100.199",
            "::1",
            "fe80::1",
            "::ffff:10.0.0.1",
        ] {
            let ip: std::net::IpAddr = ip.parse().expect("address");
            assert_eq!(ip_string(ip), ip.to_string());
        }
        for n in 0..=255u8 {
            let ip = std::net::IpAddr::from([n, 255 - n, n / 3, 7]);
            assert_eq!(ip_string(ip), ip.to_string());
        }
    }

    #[test]
    fn ids_are_non_zero_and_distinct() {
        let ids: std::collections::HashSet<[u8; 8]> = (0..10_000).map(|_| new_span_id()).collect();
        assert_eq!(ids.len(), 10_000);
        assert!(!ids.contains(&[0; 8]));
        let a = new_trace_id();
        let b = new_trace_id();
        assert_ne!(a, b);
        assert_ne!(a, [0; 16]);
        let other_thread = std::thread::spawn(new_trace_id).join().expect("thread");
        assert_ne!(other_thread, a, "every thread has its own seed");
    }
}
