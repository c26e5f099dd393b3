//! [`Span`]: one line of `ztrace --print=json`, with typed accessors for assertions.
//!
//! The schema is DESIGN.md's: `trace_id`, `span_id`, `parent_span_id` (or null), `name`, `kind`,
//! `service`, `start_unix_nano`, `end_unix_nano`, `status`, `attributes{}`, `resource{}`.
//! Accessors return `None` rather than guessing when a field is absent or of another type, so a
//! test's `assert_eq!` shows exactly what the agent wrote.

use std::fmt;

use serde_json::Value;

/// One span as printed by `--print=json`.
#[derive(Clone, PartialEq)]
pub struct Span(pub Value);

impl Span {
    /// Parses one stdout line; `None` if it is not a JSON object.
    pub fn parse(line: &str) -> Option<Span> {
        match serde_json::from_str(line.trim()) {
            Ok(value @ Value::Object(_)) => Some(Span(value)),
            _ => None,
        }
    }

    fn str_field(&self, key: &str) -> Option<&str> {
        self.0.get(key)?.as_str()
    }

    pub fn name(&self) -> Option<&str> {
        self.str_field("name")
    }
    pub fn kind(&self) -> Option<&str> {
        self.str_field("kind")
    }
    pub fn service(&self) -> Option<&str> {
        self.str_field("service")
    }
    pub fn status(&self) -> Option<&str> {
        self.str_field("status")
    }
    pub fn trace_id(&self) -> Option<&str> {
        self.str_field("trace_id")
    }
    pub fn span_id(&self) -> Option<&str> {
        self.str_field("span_id")
    }
    /// `Some(None)` when the field is there and null (a root span).
    pub fn parent_span_id(&self) -> Option<Option<&str>> {
        match self.0.get("parent_span_id")? {
            Value::Null => Some(None),
            Value::String(id) => Some(Some(id)),
            _ => None,
        }
    }
    pub fn start_unix_nano(&self) -> Option<u64> {
        self.0.get("start_unix_nano")?.as_u64()
    }
    pub fn end_unix_nano(&self) -> Option<u64> {
        self.0.get("end_unix_nano")?.as_u64()
    }
    /// `end - start`, when both are there and in order.
    pub fn duration_nanos(&self) -> Option<u64> {
        self.end_unix_nano()?.checked_sub(self.start_unix_nano()?)
    }

    /// An attribute's raw JSON value.
    pub fn attr(&self, key: &str) -> Option<&Value> {
        self.0.get("attributes")?.get(key)
    }
    /// A string attribute (`None` if absent or not a string).
    pub fn attr_str(&self, key: &str) -> Option<&str> {
        self.attr(key)?.as_str()
    }
    /// An integer attribute (`None` if absent or not a JSON integer: `"200"` is not 200).
    pub fn attr_i64(&self, key: &str) -> Option<i64> {
        self.attr(key)?.as_i64()
    }

    /// A resource attribute's raw JSON value.
    pub fn resource(&self, key: &str) -> Option<&Value> {
        self.0.get("resource")?.get(key)
    }
    pub fn resource_str(&self, key: &str) -> Option<&str> {
        self.resource(key)?.as_str()
    }
    /// `process.pid` of the resource (an integer, or a string of digits).
    pub fn pid(&self) -> Option<u32> {
        match self.resource("process.pid")? {
            Value::Number(n) => n.as_u64().and_then(|n| u32::try_from(n).ok()),
            Value::String(s) => s.parse().ok(),
            _ => None,
        }
    }

    /// The port the request went to: `server.port` (on both the server and the client side).
    pub fn server_port(&self) -> Option<u16> {
        self.attr_i64("server.port")
            .and_then(|p| u16::try_from(p).ok())
    }
    pub fn url_path(&self) -> Option<&str> {
        self.attr_str("url.path")
    }
    pub fn is_server(&self) -> bool {
        self.kind() == Some("server")
    }
    pub fn is_client(&self) -> bool {
        self.kind() == Some("client")
    }
}

impl fmt::Debug for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The server and the client spans among `spans`, each sorted by start time.
pub fn split_by_kind(spans: &[Span]) -> (Vec<Span>, Vec<Span>) {
    let (mut servers, mut clients): (Vec<Span>, Vec<Span>) = spans
        .iter()
        .filter(|s| s.is_server() || s.is_client())
        .cloned()
        .partition(Span::is_server);
    servers.sort_by_key(Span::start_unix_nano);
    clients.sort_by_key(Span::start_unix_nano);
    (servers, clients)
}

/// Spans one per line, for failure messages.
pub fn list(spans: &[Span]) -> String {
    if spans.is_empty() {
        return "  (none)".to_owned();
    }
    spans
        .iter()
        .map(|s| format!("  {s:?}"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_design_md_span_is_read() {
        let line = r#"{"trace_id":"0af7651916cd43dd8448eb211c80319c","span_id":"b7ad6b7169203331","parent_span_id":null,
            "name":"GET /orders/{id}","kind":"server","service":"orders","start_unix_nano":100,"end_unix_nano":250,
            "status":"unset","attributes":{"http.request.method":"GET","server.port":8080,"http.response.status_code":"200"},
            "resource":{"service.name":"orders","process.pid":4242}}"#
            .replace('\n', "");
        let span = Span::parse(&line).expect("parses");
        assert_eq!(span.name(), Some("GET /orders/{id}"));
        assert!(span.is_server() && !span.is_client());
        assert_eq!(span.parent_span_id(), Some(None));
        assert_eq!(span.duration_nanos(), Some(150));
        assert_eq!(span.server_port(), Some(8080));
        assert_eq!(span.attr_str("http.request.method"), Some("GET"));
        assert_eq!(
            span.attr_i64("http.response.status_code"),
            None,
            "a string is not an int"
        );
        assert_eq!(span.pid(), Some(4242));
        assert!(Span::parse("ztrace is ready").is_none());
        assert!(Span::parse("[1,2]").is_none());
    }
}
