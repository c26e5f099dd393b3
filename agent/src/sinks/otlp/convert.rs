//! Span model → OTLP protobuf messages.
//!
//! Pure conversion, no I/O: a batch of [`Span`]s becomes one [`ExportTraceServiceRequest`] with
//! one `ResourceSpans` per distinct resource (spans of one process share an `Arc<Resource>`;
//! equal resources behind different `Arc`s are merged too), each holding one `ScopeSpans` for the
//! `ztrace` instrumentation scope. Span events, links, trace state and flags are not produced:
//! the span model has none.

use std::collections::HashMap;
use std::sync::Arc;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource as ProtoResource;
use opentelemetry_proto::tonic::trace::v1::{
    span::SpanKind as ProtoSpanKind, status::StatusCode as ProtoStatusCode, ResourceSpans,
    ScopeSpans, Span as ProtoSpan, Status as ProtoStatus,
};

use crate::spans::{AttrValue, Resource, Span, SpanKind, StatusCode};

/// Instrumentation scope name of every exported span.
pub const SCOPE_NAME: &str = "ztrace";
/// Instrumentation scope version: the agent's version.
pub const SCOPE_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Converts a batch into one export request, grouping spans by resource.
///
/// Resources appear in the order of their first span; spans keep their order within a resource.
pub fn to_request(spans: Vec<Span>) -> ExportTraceServiceRequest {
    // Pass 1, while every span (and so every Arc) is alive, so that no address is reused:
    // assign each span to a resource group. The pointer map makes the common case (one shared
    // Arc per process) cheap; a pointer miss falls back to comparing values.
    let mut resources: Vec<&Arc<Resource>> = Vec::new();
    let mut by_ptr: HashMap<*const Resource, usize> = HashMap::new();
    let groups: Vec<usize> = spans
        .iter()
        .map(|span| {
            *by_ptr
                .entry(Arc::as_ptr(&span.resource))
                .or_insert_with(|| {
                    resources
                        .iter()
                        .position(|r| ***r == *span.resource)
                        .unwrap_or_else(|| {
                            resources.push(&span.resource);
                            resources.len() - 1
                        })
                })
        })
        .collect();
    let mut resource_spans: Vec<ResourceSpans> = resources
        .iter()
        .map(|resource| ResourceSpans {
            resource: Some(resource_to_proto(resource)),
            scope_spans: vec![ScopeSpans {
                scope: Some(scope()),
                spans: Vec::new(),
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        })
        .collect();
    // Pass 2: move each span into its group.
    for (span, group) in spans.into_iter().zip(groups) {
        resource_spans[group].scope_spans[0]
            .spans
            .push(span_to_proto(span));
    }
    ExportTraceServiceRequest { resource_spans }
}

/// The `ztrace` instrumentation scope.
fn scope() -> InstrumentationScope {
    InstrumentationScope {
        name: SCOPE_NAME.to_owned(),
        version: SCOPE_VERSION.to_owned(),
        attributes: Vec::new(),
        dropped_attributes_count: 0,
    }
}

/// A resource's attributes; `service.name` is added from `service_name` if the list lacks it.
pub fn resource_to_proto(resource: &Resource) -> ProtoResource {
    let mut attributes = Vec::with_capacity(resource.attributes.len() + 1);
    if !resource.attributes.iter().any(|(k, _)| k == "service.name") {
        attributes.push(key_value(
            "service.name".to_owned(),
            AttrValue::from(resource.service_name.as_str()),
        ));
    }
    attributes.extend(
        resource
            .attributes
            .iter()
            .map(|(k, v)| key_value(k.clone(), v.clone())),
    );
    ProtoResource {
        attributes,
        dropped_attributes_count: 0,
        entity_refs: Vec::new(),
    }
}

/// One span, field by field. The resource is not part of it (see [`to_request`]).
pub fn span_to_proto(span: Span) -> ProtoSpan {
    ProtoSpan {
        trace_id: span.trace_id.to_vec(),
        span_id: span.span_id.to_vec(),
        trace_state: String::new(),
        parent_span_id: span
            .parent_span_id
            .map(|id| id.to_vec())
            .unwrap_or_default(),
        flags: 0,
        name: span.name,
        kind: kind_to_proto(span.kind) as i32,
        start_time_unix_nano: span.start_unix_nano,
        end_time_unix_nano: span.end_unix_nano,
        attributes: span
            .attributes
            .into_iter()
            .map(|a| key_value(a.key.to_owned(), a.value))
            .collect(),
        dropped_attributes_count: 0,
        events: Vec::new(),
        dropped_events_count: 0,
        links: Vec::new(),
        dropped_links_count: 0,
        status: Some(ProtoStatus {
            message: span.status_message.unwrap_or_default(),
            code: status_to_proto(span.status) as i32,
        }),
    }
}

fn kind_to_proto(kind: SpanKind) -> ProtoSpanKind {
    match kind {
        SpanKind::Server => ProtoSpanKind::Server,
        SpanKind::Client => ProtoSpanKind::Client,
        SpanKind::Internal => ProtoSpanKind::Internal,
        SpanKind::Producer => ProtoSpanKind::Producer,
        SpanKind::Consumer => ProtoSpanKind::Consumer,
    }
}

fn status_to_proto(status: StatusCode) -> ProtoStatusCode {
    match status {
        StatusCode::Unset => ProtoStatusCode::Unset,
        StatusCode::Ok => ProtoStatusCode::Ok,
        StatusCode::Error => ProtoStatusCode::Error,
    }
}

fn key_value(key: String, value: AttrValue) -> KeyValue {
    let value = match value {
        AttrValue::Str(s) => any_value::Value::StringValue(s.into_string()),
        AttrValue::Int(i) => any_value::Value::IntValue(i),
        AttrValue::Bool(b) => any_value::Value::BoolValue(b),
        AttrValue::Double(d) => any_value::Value::DoubleValue(d),
    };
    KeyValue {
        key,
        value: Some(AnyValue { value: Some(value) }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spans::{
        testing::{resource, span},
        Attribute,
    };

    fn value(kv: &KeyValue) -> &any_value::Value {
        kv.value
            .as_ref()
            .and_then(|v| v.value.as_ref())
            .expect("attribute has a value")
    }

    #[test]
    fn span_fields() {
        let r = resource("orders", 42);
        let mut s = span("GET /orders/{id}", &r);
        s.trace_id = *b"0123456789abcdef";
        s.span_id = *b"spanid01";
        s.parent_span_id = Some(*b"parent01");
        s.kind = SpanKind::Server;
        s.start_unix_nano = 1_700_000_000_000_000_001;
        s.end_unix_nano = 1_700_000_000_123_000_001;
        s.status = StatusCode::Error;
        s.status_message = Some("boom".to_owned());
        s.attributes = vec![
            Attribute::new("http.request.method", "GET"),
            Attribute::new("http.response.status_code", 500_i64),
            Attribute::new("ztrace.tls", true),
            Attribute {
                key: "ztrace.ratio",
                value: AttrValue::Double(0.5),
            },
        ];
        let p = span_to_proto(s);
        assert_eq!(p.trace_id, b"0123456789abcdef");
        assert_eq!(p.span_id, b"spanid01");
        assert_eq!(p.parent_span_id, b"parent01");
        assert_eq!(p.name, "GET /orders/{id}");
        assert_eq!(p.kind, ProtoSpanKind::Server as i32);
        assert_eq!(p.kind, 2, "SPAN_KIND_SERVER on the wire");
        assert_eq!(p.start_time_unix_nano, 1_700_000_000_000_000_001);
        assert_eq!(p.end_time_unix_nano, 1_700_000_000_123_000_001);
        let status = p.status.expect("status");
        assert_eq!(status.code, ProtoStatusCode::Error as i32);
        assert_eq!(status.code, 2, "STATUS_CODE_ERROR on the wire");
        assert_eq!(status.message, "boom");
        let keys: Vec<&str> = p.attributes.iter().map(|kv| kv.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "http.request.method",
                "http.response.status_code",
                "ztrace.tls",
                "ztrace.ratio"
            ]
        );
        assert_eq!(
            value(&p.attributes[0]),
            &any_value::Value::StringValue("GET".into())
        );
        assert_eq!(value(&p.attributes[1]), &any_value::Value::IntValue(500));
        assert_eq!(value(&p.attributes[2]), &any_value::Value::BoolValue(true));
        assert_eq!(value(&p.attributes[3]), &any_value::Value::DoubleValue(0.5));
        assert_eq!(p.trace_state, "");
        assert_eq!(p.flags, 0);
        assert!(p.events.is_empty() && p.links.is_empty());
    }

    #[test]
    fn root_span_has_empty_parent_and_unset_status() {
        let r = resource("a", 1);
        let p = span_to_proto(span("x", &r));
        assert!(p.parent_span_id.is_empty());
        let status = p.status.expect("status");
        assert_eq!(status.code, ProtoStatusCode::Unset as i32);
        assert_eq!(status.message, "");
    }

    #[test]
    fn kinds_and_statuses_map_to_otlp_numbers() {
        let r = resource("a", 1);
        let kinds = [
            (SpanKind::Internal, 1),
            (SpanKind::Server, 2),
            (SpanKind::Client, 3),
            (SpanKind::Producer, 4),
            (SpanKind::Consumer, 5),
        ];
        for (kind, n) in kinds {
            let mut s = span("x", &r);
            s.kind = kind;
            assert_eq!(span_to_proto(s).kind, n, "{kind:?}");
        }
        for (status, n) in [
            (StatusCode::Unset, 0),
            (StatusCode::Ok, 1),
            (StatusCode::Error, 2),
        ] {
            let mut s = span("x", &r);
            s.status = status;
            assert_eq!(
                span_to_proto(s).status.map(|st| st.code),
                Some(n),
                "{status:?}"
            );
        }
    }

    #[test]
    fn groups_by_resource_pointer_and_value() {
        let a = resource("a", 1);
        let b = resource("b", 2);
        let a_copy = Arc::new((*a).clone()); // equal value, different Arc
        let spans = vec![
            span("a1", &a),
            span("b1", &b),
            span("a2", &a_copy),
            span("a3", &a),
        ];
        let req = to_request(spans);
        assert_eq!(req.resource_spans.len(), 2);
        let names = |rs: &ResourceSpans| -> Vec<String> {
            assert_eq!(rs.scope_spans.len(), 1);
            rs.scope_spans[0]
                .spans
                .iter()
                .map(|s| s.name.clone())
                .collect()
        };
        assert_eq!(names(&req.resource_spans[0]), ["a1", "a2", "a3"]);
        assert_eq!(names(&req.resource_spans[1]), ["b1"]);
        let res = req.resource_spans[1].resource.as_ref().expect("resource");
        assert_eq!(res.attributes.len(), 2);
        assert_eq!(res.attributes[0].key, "service.name");
        assert_eq!(
            value(&res.attributes[0]),
            &any_value::Value::StringValue("b".into())
        );
        assert_eq!(res.attributes[1].key, "process.pid");
        assert_eq!(value(&res.attributes[1]), &any_value::Value::IntValue(2));
        let scope = req.resource_spans[0].scope_spans[0]
            .scope
            .as_ref()
            .expect("scope");
        assert_eq!(scope.name, "ztrace");
        assert_eq!(scope.version, env!("CARGO_PKG_VERSION"));
    }

    #[test]
    fn service_name_added_when_missing_from_attributes() {
        let r = Resource {
            service_name: "svc".into(),
            attributes: vec![("host.name".into(), "h".into())],
        };
        let p = resource_to_proto(&r);
        let keys: Vec<&str> = p.attributes.iter().map(|kv| kv.key.as_str()).collect();
        assert_eq!(keys, ["service.name", "host.name"]);
        assert_eq!(
            value(&p.attributes[0]),
            &any_value::Value::StringValue("svc".into())
        );
    }

    #[test]
    fn empty_batch_is_empty_request() {
        assert!(to_request(Vec::new()).resource_spans.is_empty());
    }
}
