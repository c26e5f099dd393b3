//! Span and resource builders for tests (the unit tests, `agent/tests`, benches): one place that
//! fills every field of a [`Span`], so tests say only what they care about
//! (`Span { kind: SpanKind::Server, ..span("GET /", &r) }`).

use std::sync::Arc;

use super::{AttrValue, Resource, Span, SpanKind, StatusCode};

/// A process's resource: `service.name` and `process.pid`.
pub fn resource(service: &str, pid: i64) -> Arc<Resource> {
    Arc::new(Resource {
        service_name: service.to_owned(),
        attributes: vec![
            ("service.name".to_owned(), AttrValue::from(service)),
            ("process.pid".to_owned(), AttrValue::Int(pid)),
        ],
    })
}

/// A client span named `name` of `resource`: trace `11…`, span `22…`, no parent, from 1 µs to
/// 2 µs (unix time), status unset, no attributes.
pub fn span(name: &str, resource: &Arc<Resource>) -> Span {
    Span {
        trace_id: [0x11; 16],
        span_id: [0x22; 8],
        parent_span_id: None,
        name: name.to_owned(),
        kind: SpanKind::Client,
        start_unix_nano: 1_000,
        end_unix_nano: 2_000,
        status: StatusCode::Unset,
        status_message: None,
        attributes: Vec::new(),
        resource: Arc::clone(resource),
    }
}
