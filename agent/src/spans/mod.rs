//! Spans: the agent's own span model, and the rules that turn protocol exchanges into spans.
//!
//! A [`Span`] is what every sink (OTLP export, `--print`, the store) receives. It is built from
//! a protocol exchange (see `protocols/`), the connection it travelled on (see `conn/`) and the
//! identity of the process that made it (see `discovery/`). This module does no I/O.

pub mod clock;
pub mod db;
pub mod http;

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
#[derive(Clone, Debug, PartialEq)]
pub enum AttrValue {
    Str(String),
    Int(i64),
    Bool(bool),
    Double(f64),
}

impl From<String> for AttrValue {
    fn from(v: String) -> Self {
        AttrValue::Str(v)
    }
}
impl From<&str> for AttrValue {
    fn from(v: &str) -> Self {
        AttrValue::Str(v.to_owned())
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
        Attribute { key, value: value.into() }
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

/// Random, non-zero trace and span ids.
pub fn new_trace_id() -> [u8; 16] {
    loop {
        let id: [u8; 16] = rand::random();
        if id != [0; 16] {
            return id;
        }
    }
}

pub fn new_span_id() -> [u8; 8] {
    loop {
        let id: [u8; 8] = rand::random();
        if id != [0; 8] {
            return id;
        }
    }
}
