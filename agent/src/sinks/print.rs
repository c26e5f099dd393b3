//! The `--print` sink: one line per span on stdout, as readable text or as JSON.
//!
//! JSON lines follow the contract in DESIGN.md (`--print=json`, also the viewer API's span
//! object): the one encoding in `spans::json`. Text lines are for people and may change; they look like
//!
//! ```text
//! server  orders  GET /orders/{id}  200  1.23ms  trace=4bf92f3577b34da6a3ce929d0e0e4736 span=00f067aa0ba902b7 parent=-  pid=42 http.request.method=GET url.path=/orders/7 ztrace.link=none
//! ```
//!
//! kind, service, span name, outcome (the HTTP or database status code when there is one, else
//! `ok`/`error`/`-`; an error span shows its message), duration, ids, then the resource's pid and
//! the span's attributes (`code.stacktrace` left out, long values cut, controls escaped) — always on
//! one line. [`Printer`] writes; [`PrintSink`] runs it on a thread of its own behind the sinks'
//! bounded queue, so a slow terminal or pipe never blocks capture.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{self, BufWriter, Write};
use std::sync::Arc;

use super::{
    queue::{Received, Worker},
    Finishing, Sink,
};
use crate::metrics::Metrics;

use crate::spans::{
    hex,
    json::{self, Head, Object},
    AttrValue, Resource, Span, StatusCode,
};

/// Output format of `--print`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum PrintFormat {
    /// One human-readable line per span.
    #[default]
    Text,
    /// One JSON object per line, the DESIGN.md span object.
    Json,
}

impl std::str::FromStr for PrintFormat {
    type Err = String;

    /// `text` or `json`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "text" => Ok(PrintFormat::Text),
            "json" => Ok(PrintFormat::Json),
            other => Err(format!(
                "unknown print format {other:?}: expected text or json"
            )),
        }
    }
}

/// Attributes shown in the outcome column rather than in the attribute list: a protocol's status
/// code (`http.response.status_code`, `db.response.status_code`, ...), whatever the protocol.
fn is_status_code(key: &str) -> bool {
    key.ends_with(".status_code")
}

/// Attributes left out of text lines (multi-line and long; JSON keeps them).
const TEXT_SKIPPED_KEYS: [&str; 1] = ["code.stacktrace"];
/// Longest attribute value shown in a text line, in characters.
const TEXT_MAX_VALUE: usize = 120;

/// Writes the one-line text form of `span` (without the newline) to `out`.
pub fn write_text(out: &mut String, span: &Span) {
    let _ = write!(
        out,
        "{:<8}{}  {}  ",
        span.kind.as_str(),
        one_line(&span.resource.service_name),
        one_line(&span.name)
    );
    let code = span
        .attributes
        .iter()
        .find(|a| is_status_code(a.key))
        .map(|a| &a.value);
    match (code, span.status) {
        (Some(code), StatusCode::Error) => {
            let _ = write!(out, "{} error", text_value(code));
        }
        (Some(code), _) => out.push_str(&text_value(code)),
        (None, status) => out.push_str(match status {
            StatusCode::Unset => "-",
            StatusCode::Ok => "ok",
            StatusCode::Error => "error",
        }),
    }
    if let Some(message) = span.status_message.as_deref().filter(|m| !m.is_empty()) {
        let _ = write!(out, " ({})", one_line(message));
    }
    let _ = write!(
        out,
        "  {}  trace={} span={} parent={}",
        duration(span.end_unix_nano.saturating_sub(span.start_unix_nano)),
        hex(&span.trace_id),
        hex(&span.span_id),
        span.parent_span_id
            .map_or_else(|| "-".to_owned(), |p| hex(&p)),
    );
    let mut sep = "  ";
    if let Some((_, pid)) = span
        .resource
        .attributes
        .iter()
        .find(|(k, _)| k == "process.pid")
    {
        let _ = write!(out, "{sep}pid={}", text_value(pid));
        sep = " ";
    }
    for a in &span.attributes {
        if is_status_code(a.key) || TEXT_SKIPPED_KEYS.contains(&a.key) {
            continue;
        }
        let _ = write!(out, "{sep}{}={}", a.key, text_value(&a.value));
        sep = " ";
    }
}

/// `850µs`, `1.23ms`, `2.500s`.
fn duration(ns: u64) -> String {
    if ns < 1_000_000 {
        format!("{}µs", ns / 1_000)
    } else if ns < 1_000_000_000 {
        format!("{:.2}ms", ns as f64 / 1e6)
    } else {
        format!("{:.3}s", ns as f64 / 1e9)
    }
}

/// A value for a text line: strings with spaces, quotes or controls are quoted and escaped; long
/// strings are cut with `…`.
fn text_value(value: &AttrValue) -> String {
    match value {
        AttrValue::Str(s) => {
            let cut: String = s.chars().take(TEXT_MAX_VALUE).collect();
            let cut = if cut.len() < s.len() {
                format!("{cut}…")
            } else {
                cut
            };
            if cut.is_empty()
                || cut
                    .chars()
                    .any(|c| c.is_whitespace() || c.is_control() || c == '"')
            {
                format!("{cut:?}")
            } else {
                cut
            }
        }
        AttrValue::Int(i) => i.to_string(),
        AttrValue::Bool(b) => b.to_string(),
        AttrValue::Double(d) => d.to_string(),
    }
}

/// A name or message on one line: control characters escaped, nothing else changed.
fn one_line(s: &str) -> String {
    if s.chars().any(char::is_control) {
        s.chars()
            .map(|c| {
                if c.is_control() {
                    c.escape_default().to_string()
                } else {
                    c.to_string()
                }
            })
            .collect()
    } else {
        s.to_owned()
    }
}

/// Writes spans, one line each, to a writer (stdout in practice). Lines are buffered: the caller
/// calls [`Printer::flush`] when it has nothing more to print for now.
pub struct Printer<W: Write> {
    out: BufWriter<W>,
    format: PrintFormat,
    line: String,
    /// The JSON line being written (reused).
    json: Vec<u8>,
    /// The JSON of each resource seen lately, by its address (the `Arc` held keeps the address
    /// from being reused): a process's resource is serialised once, not once per span.
    resources: HashMap<usize, (Arc<Resource>, Vec<u8>)>,
}

/// Resources whose JSON is kept; beyond that the cache starts over.
const RESOURCE_CACHE: usize = 1024;

impl<W: Write> Printer<W> {
    /// A printer of `format` lines to `out`.
    pub fn new(out: W, format: PrintFormat) -> Self {
        Printer {
            out: BufWriter::with_capacity(64 * 1024, out),
            format,
            line: String::new(),
            json: Vec::new(),
            resources: HashMap::new(),
        }
    }

    /// Writes one span as one line. An error means the output is gone (a closed pipe, say); the
    /// caller stops printing.
    pub fn print(&mut self, span: &Span) -> io::Result<()> {
        match self.format {
            PrintFormat::Text => {
                self.line.clear();
                write_text(&mut self.line, span);
                self.line.push('\n');
                self.out.write_all(self.line.as_bytes())
            }
            PrintFormat::Json => {
                self.json.clear();
                let key = Arc::as_ptr(&span.resource) as usize;
                if !self.resources.contains_key(&key) {
                    if self.resources.len() >= RESOURCE_CACHE {
                        self.resources.clear();
                    }
                    let mut bytes = Vec::new();
                    json::write_object(&mut bytes, Object::Resource(&span.resource.attributes));
                    self.resources.insert(key, (span.resource.clone(), bytes));
                }
                let resource = self
                    .resources
                    .get(&key)
                    .map(|(_, bytes)| Object::Raw(bytes));
                json::write_span(
                    &mut self.json,
                    &Head::of(span),
                    Object::Attributes(&span.attributes),
                    resource,
                );
                self.json.push(b'\n');
                self.out.write_all(&self.json)
            }
        }
    }

    /// Writes out buffered lines.
    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    /// The underlying writer, after a flush.
    pub fn into_inner(self) -> io::Result<W> {
        self.out.into_inner().map_err(|e| e.into_error())
    }
}

/// Spans waiting for the print thread: the memory bound of a slow stdout (about 1 KiB a span).
/// Beyond it batches are dropped and counted (`spans_dropped_queue_full`).
const QUEUE_SPANS: usize = 32_768;

/// `--print`: a thread writing spans to stdout, so a slow terminal or pipe never blocks capture.
pub struct PrintSink(Worker);

impl PrintSink {
    /// Starts the print thread.
    pub fn start(format: PrintFormat, metrics: Arc<Metrics>) -> std::io::Result<Self> {
        let dropped = move |n| Metrics::add(&metrics.spans_dropped_queue_full, n);
        let worker = Worker::spawn("ztrace-print", QUEUE_SPANS, dropped, move |mut rx| {
            let mut printer = Printer::new(std::io::stdout().lock(), format);
            // Print what is queued, flush when the queue is empty: one write per burst.
            while let Some(batch) = rx.recv_blocking() {
                let mut result = batch.iter().try_for_each(|s| printer.print(s));
                while let (Ok(()), Received::Batch(batch)) = (&result, rx.try_recv()) {
                    result = batch.iter().try_for_each(|s| printer.print(s));
                }
                if result.and_then(|()| printer.flush()).is_err() {
                    break; // stdout closed: nothing more to print
                }
            }
        })?;
        Ok(PrintSink(worker))
    }
}

impl Sink for PrintSink {
    fn send(&mut self, spans: Vec<Span>) {
        self.0.send(spans);
    }

    fn queued(&self) -> (&'static str, usize) {
        ("print_queue_spans", self.0.queued())
    }

    fn finish(self: Box<Self>) -> Finishing {
        self.0.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spans::{json::span_to_json, testing, Attribute, SpanKind};

    fn span() -> Span {
        Span {
            trace_id: [0x4b; 16],
            span_id: [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7],
            kind: SpanKind::Server,
            start_unix_nano: 1_700_000_000_000_000_000,
            end_unix_nano: 1_700_000_000_001_230_000,
            attributes: vec![
                Attribute::new("http.request.method", "GET"),
                Attribute::new("url.path", "/orders/7"),
                Attribute::new("http.response.status_code", 200_i64),
                Attribute::new("ztrace.tls", false),
                Attribute {
                    key: "ztrace.ratio",
                    value: AttrValue::Double(0.25),
                },
                Attribute::new("code.stacktrace", "main\n  at app.py:3"),
            ],
            ..testing::span("GET /orders/{id}", &testing::resource("orders", 42))
        }
    }

    #[test]
    fn json_has_exactly_the_documented_keys_and_types() {
        let v = span_to_json(&span());
        let obj = v.as_object().expect("object");
        let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "attributes",
                "end_unix_nano",
                "kind",
                "name",
                "parent_span_id",
                "resource",
                "service",
                "span_id",
                "start_unix_nano",
                "status",
                "trace_id"
            ]
        );
        assert_eq!(v["trace_id"], "4b4b4b4b4b4b4b4b4b4b4b4b4b4b4b4b");
        assert_eq!(v["span_id"], "00f067aa0ba902b7");
        assert!(v["parent_span_id"].is_null());
        assert_eq!(v["name"], "GET /orders/{id}");
        assert_eq!(v["kind"], "server");
        assert_eq!(v["service"], "orders");
        assert_eq!(
            v["start_unix_nano"].as_u64(),
            Some(1_700_000_000_000_000_000)
        );
        assert_eq!(v["end_unix_nano"].as_u64(), Some(1_700_000_000_001_230_000));
        assert_eq!(v["status"], "unset");
        assert_eq!(
            v["attributes"],
            serde_json::json!({
                "http.request.method": "GET",
                "url.path": "/orders/7",
                "http.response.status_code": 200,
                "ztrace.tls": false,
                "ztrace.ratio": 0.25,
                "code.stacktrace": "main\n  at app.py:3",
            })
        );
        assert!(v["attributes"]["http.response.status_code"].is_i64());
        assert_eq!(
            v["resource"],
            serde_json::json!({"service.name": "orders", "process.pid": 42})
        );
    }

    #[test]
    fn json_parent_kind_status() {
        let mut s = span();
        s.parent_span_id = Some([0xab; 8]);
        s.kind = SpanKind::Client;
        s.status = StatusCode::Error;
        s.attributes = vec![Attribute {
            key: "x",
            value: AttrValue::Double(f64::NAN),
        }];
        let v = span_to_json(&s);
        assert_eq!(v["parent_span_id"], "abababababababab");
        assert_eq!(v["kind"], "client");
        assert_eq!(v["status"], "error");
        assert!(v["attributes"]["x"].is_null());
    }

    #[test]
    fn printed_json_line_equals_span_to_json_in_documented_order() {
        let mut p = Printer::new(Vec::new(), PrintFormat::Json);
        p.print(&span()).expect("print");
        p.print(&span()).expect("print");
        let out = String::from_utf8(p.into_inner().expect("flush")).expect("utf8");
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 2);
        let parsed: serde_json::Value = serde_json::from_str(lines[0]).expect("json line");
        assert_eq!(parsed, span_to_json(&span()));
        assert!(lines[0].starts_with(r#"{"trace_id":"4b4b"#), "{}", lines[0]);
        let order = [
            "\"span_id\"",
            "\"parent_span_id\"",
            "\"name\"",
            "\"kind\"",
            "\"service\"",
            "\"start_unix_nano\"",
        ];
        let positions: Vec<usize> = order
            .iter()
            .map(|k| lines[0].find(k).expect("key"))
            .collect();
        assert!(positions.windows(2).all(|w| w[0] < w[1]), "{}", lines[0]);
    }

    #[test]
    fn text_line() {
        let mut p = Printer::new(Vec::new(), PrintFormat::Text);
        p.print(&span()).expect("print");
        let out = String::from_utf8(p.into_inner().expect("flush")).expect("utf8");
        assert_eq!(
            out,
            "server  orders  GET /orders/{id}  200  1.23ms  trace=4b4b4b4b4b4b4b4b4b4b4b4b4b4b4b4b \
             span=00f067aa0ba902b7 parent=-  pid=42 http.request.method=GET url.path=/orders/7 \
             ztrace.tls=false ztrace.ratio=0.25\n"
        );
    }

    #[test]
    fn text_error_escapes_and_cuts() {
        let mut s = span();
        s.kind = SpanKind::Client;
        s.status = StatusCode::Error;
        s.status_message = Some("bad\nthing".into());
        s.parent_span_id = Some([1; 8]);
        s.start_unix_nano = 0;
        s.end_unix_nano = 2_500_000_000;
        s.attributes = vec![
            Attribute::new("db.query.text", "SELECT 1\nFROM t"),
            Attribute::new("server.address", "x".repeat(200)),
        ];
        let mut line = String::new();
        write_text(&mut line, &s);
        assert!(!line.contains('\n'), "{line}");
        assert!(
            line.starts_with("client  orders  GET /orders/{id}  error (bad\\nthing)  2.500s  "),
            "{line}"
        );
        assert!(line.contains("parent=0101010101010101"), "{line}");
        assert!(
            line.contains(r#"db.query.text="SELECT 1\nFROM t""#),
            "{line}"
        );
        assert!(
            line.contains(&format!("server.address={}…", "x".repeat(120))),
            "{line}"
        );
        s.attributes = vec![Attribute::new("db.response.status_code", "42P01")];
        line.clear();
        write_text(&mut line, &s);
        assert!(line.contains("  42P01 error (bad\\nthing)  "), "{line}");
    }

    #[test]
    fn durations() {
        assert_eq!(duration(850_000), "850µs");
        assert_eq!(duration(1_234_567), "1.23ms");
        assert_eq!(duration(2_500_000_000), "2.500s");
    }

    #[test]
    fn format_names() {
        assert_eq!("json".parse::<PrintFormat>(), Ok(PrintFormat::Json));
        assert_eq!("text".parse::<PrintFormat>(), Ok(PrintFormat::Text));
        assert!("yaml".parse::<PrintFormat>().is_err());
    }
}
