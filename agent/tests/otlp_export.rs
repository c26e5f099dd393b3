//! The OTLP exporter against an independent receiver: `tests/otlp_receiver.py` (grpcio and
//! opentelemetry-proto's Python bindings), over gRPC and over HTTP/protobuf.
//!
//! Needs `ZTRACE_PYTHON` pointing to a Python with `grpcio opentelemetry-proto protobuf`
//! (`cargo xtask test` sets it up); ignored by a plain `cargo test`, and fails — never passes —
//! when run without it.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use ztrace::metrics::Metrics;
use ztrace::sinks::otlp::{self as export, OtlpConfig, OtlpProtocol};
use ztrace::spans::{hex, testing, AttrValue, Attribute, Resource, Span, SpanKind, StatusCode};
use ztrace_e2e::otlp::OtlpReceiver;

/// A process's resource as the receiver sees it.
fn resource(service: &str, pid: i64) -> Arc<Resource> {
    let mut resource = Resource::clone(&testing::resource(service, pid));
    resource
        .attributes
        .push(("host.name".to_owned(), AttrValue::from("testhost")));
    Arc::new(resource)
}

/// Three spans of two resources: a server span of `orders`, its client span to `db` (another
/// process), and an error span of `orders`. `tag` makes ids differ per transport.
fn spans(tag: u8) -> Vec<Span> {
    let (orders, db) = (resource("orders", 10), resource("db", 20));
    let trace_id = [tag; 16];
    let base = 1_700_000_000_000_000_000_u64;
    vec![
        Span {
            trace_id,
            span_id: [tag, 1, 0, 0, 0, 0, 0, 1],
            kind: SpanKind::Server,
            start_unix_nano: base,
            end_unix_nano: base + 5_000_000,
            attributes: vec![
                Attribute::new("http.request.method", "GET"),
                Attribute::new("http.response.status_code", 200_i64),
                Attribute::new("ztrace.tls", true),
                Attribute {
                    key: "ztrace.ratio",
                    value: AttrValue::Double(0.5),
                },
            ],
            ..testing::span("GET /orders/{id}", &orders)
        },
        Span {
            trace_id,
            span_id: [tag, 2, 0, 0, 0, 0, 0, 2],
            parent_span_id: Some([tag, 1, 0, 0, 0, 0, 0, 1]),
            start_unix_nano: base + 1_000_000,
            end_unix_nano: base + 2_000_000,
            status: StatusCode::Ok,
            attributes: vec![Attribute::new("db.system.name", "postgresql")],
            ..testing::span("SELECT orders", &db)
        },
        Span {
            trace_id,
            span_id: [tag, 3, 0, 0, 0, 0, 0, 3],
            kind: SpanKind::Server,
            start_unix_nano: base + 10,
            end_unix_nano: base + 20,
            status: StatusCode::Error,
            status_message: Some("Internal Server Error".into()),
            attributes: vec![Attribute::new("http.response.status_code", 500_i64)],
            ..testing::span("POST /orders", &orders)
        },
    ]
}

/// Exports `spans(tag)` through a fresh exporter and waits for it to flush and end.
async fn export(protocol: OtlpProtocol, endpoint: String, tag: u8) -> Arc<Metrics> {
    let metrics = Arc::new(Metrics::default());
    let config = OtlpConfig {
        endpoint,
        protocol,
        headers: export::parse_headers("x-ztrace-test=hello%20there,authorization=Bearer%20t")
            .expect("headers"),
        queue_spans: 16,
        batch_spans: 3,
        batch_timeout: Duration::from_millis(100),
        traces_endpoint_is_full: false,
    };
    let (handle, task) = export::spawn(config, Arc::clone(&metrics)).expect("spawn");
    for span in spans(tag) {
        handle.send(span);
    }
    // The batch is full, so it goes at once; wait for it before shutting down.
    let deadline = Instant::now() + Duration::from_secs(15);
    while metrics.spans_exported.load(Ordering::Relaxed)
        + metrics.spans_export_failed.load(Ordering::Relaxed)
        < 3
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(handle);
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("exporter ends")
        .expect("no panic");
    metrics
}

/// What the receiver must have written for `spans(tag)` over `transport`, in order.
fn expected(transport: &str, tag: u8) -> Vec<Value> {
    let orders = json!({"service.name": "orders", "process.pid": 10, "host.name": "testhost"});
    let db = json!({"service.name": "db", "process.pid": 20, "host.name": "testhost"});
    let id = |n: u8| hex(&[tag, n, 0, 0, 0, 0, 0, n]);
    let base = 1_700_000_000_000_000_000_u64;
    let line = |resource: &Value,
                n: u8,
                parent: String,
                name: &str,
                kind: &str,
                times: (u64, u64),
                status: Value,
                attributes: Value| {
        json!({
            "transport": transport,
            "resource": resource,
            "scope": "ztrace",
            "scope_version": env!("CARGO_PKG_VERSION"),
            "trace_id": hex(&[tag; 16]),
            "span_id": id(n),
            "parent_span_id": parent,
            "name": name,
            "kind": kind,
            "start_time_unix_nano": times.0,
            "end_time_unix_nano": times.1,
            "status": status,
            "attributes": attributes,
            "headers": {"x-ztrace-test": "hello there"},
        })
    };
    // Grouped by resource: both `orders` spans, then the `db` span.
    vec![
        line(
            &orders,
            1,
            String::new(),
            "GET /orders/{id}",
            "SPAN_KIND_SERVER",
            (base, base + 5_000_000),
            json!({"code": "STATUS_CODE_UNSET", "message": ""}),
            json!({"http.request.method": "GET", "http.response.status_code": 200, "ztrace.tls": true, "ztrace.ratio": 0.5}),
        ),
        line(
            &orders,
            3,
            String::new(),
            "POST /orders",
            "SPAN_KIND_SERVER",
            (base + 10, base + 20),
            json!({"code": "STATUS_CODE_ERROR", "message": "Internal Server Error"}),
            json!({"http.response.status_code": 500}),
        ),
        line(
            &db,
            2,
            id(1),
            "SELECT orders",
            "SPAN_KIND_CLIENT",
            (base + 1_000_000, base + 2_000_000),
            json!({"code": "STATUS_CODE_OK", "message": ""}),
            json!({"db.system.name": "postgresql"}),
        ),
    ]
}

/// The first `n` spans the receiver got, waiting 10 s at most for them.
fn received(receiver: &OtlpReceiver, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let spans = receiver.spans();
        if spans.len() >= n || Instant::now() > deadline {
            return spans.into_iter().map(|s| s.0).collect();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test]
#[ignore = "needs the OTLP receiver venv; run by cargo xtask test"]
async fn exports_to_an_independent_receiver_over_grpc_and_http() {
    // The receiver fails the first request (gRPC UNAVAILABLE): the exporter must retry it.
    let mut receiver = OtlpReceiver::start_failing(1);

    let grpc = export(OtlpProtocol::Grpc, receiver.grpc_endpoint(), 0xa1).await;
    let got = received(&receiver, 3);
    assert_eq!(got, expected("grpc", 0xa1), "over gRPC");
    assert_eq!(grpc.spans_exported.load(Ordering::Relaxed), 3);
    assert_eq!(
        grpc.export_errors.load(Ordering::Relaxed),
        1,
        "one UNAVAILABLE, then a retry"
    );
    assert_eq!(grpc.spans_export_failed.load(Ordering::Relaxed), 0);

    let http = export(OtlpProtocol::HttpProtobuf, receiver.http_endpoint(), 0xb2).await;
    let got = received(&receiver, 6);
    assert_eq!(got.len(), 6, "{got:#?}");
    assert_eq!(got[3..], expected("http", 0xb2), "over HTTP");
    assert_eq!(http.spans_exported.load(Ordering::Relaxed), 3);
    assert_eq!(http.export_errors.load(Ordering::Relaxed), 0);

    let status = receiver.stop();
    assert!(
        status.is_some_and(|s| s.success()),
        "receiver exit on SIGTERM: {status:?}"
    );
}
