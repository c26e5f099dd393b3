//! Tests of configuration rules, header parsing and of the exporter task against a minimal
//! HTTP/1.1 server on loopback (answers scripted per connection, requests recorded).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use super::*;
use crate::spans::{
    testing::{self, resource},
    Attribute, Resource, SpanKind, StatusCode,
};

// ---- configuration -------------------------------------------------------------------------

#[test]
fn headers_parse_and_decode() {
    let h =
        parse_headers("api-key=secret, x-tenant = a%20b%2Cc ,,Authorization=Basic%20dXNlcjpwYXNz=")
            .expect("valid");
    assert_eq!(
        h,
        [
            ("api-key".to_owned(), "secret".to_owned()),
            ("x-tenant".to_owned(), "a b,c".to_owned()),
            ("Authorization".to_owned(), "Basic dXNlcjpwYXNz=".to_owned()),
        ]
    );
    assert_eq!(parse_headers("").expect("empty"), []);
    assert_eq!(parse_headers(" , ").expect("blank items"), []);
    assert_eq!(
        parse_headers("k=").expect("empty value"),
        [("k".to_owned(), String::new())]
    );
    assert_eq!(
        parse_headers("k=a+b").expect("plus"),
        [("k".to_owned(), "a+b".to_owned())]
    );
}

#[test]
fn headers_reject_malformed() {
    for bad in [
        "novalue",
        "=v",
        "bad key=v",
        "k=%zz",
        "k=%4",
        "k=%ff",
        "k=a%0Ab",
        "k=v,other",
    ] {
        assert!(
            matches!(parse_headers(bad), Err(ExportError::InvalidHeader(_))),
            "{bad:?} accepted"
        );
    }
}

#[test]
fn protocol_names() {
    assert_eq!(
        "grpc".parse::<OtlpProtocol>().expect("grpc"),
        OtlpProtocol::Grpc
    );
    assert_eq!(
        "http/protobuf".parse::<OtlpProtocol>().expect("http"),
        OtlpProtocol::HttpProtobuf
    );
    assert!(matches!(
        "http/json".parse::<OtlpProtocol>(),
        Err(ExportError::InvalidProtocol(_))
    ));
    assert_eq!(OtlpProtocol::HttpProtobuf.to_string(), "http/protobuf");
}

fn url(protocol: OtlpProtocol, endpoint: Option<&str>, traces: Option<&str>) -> String {
    OtlpConfig::resolve(protocol, endpoint, traces).traces_url()
}

#[test]
fn endpoint_rules() {
    use OtlpProtocol::{Grpc, HttpProtobuf};
    // Defaults.
    assert_eq!(url(Grpc, None, None), "http://localhost:4317");
    assert_eq!(
        url(HttpProtobuf, None, None),
        "http://localhost:4318/v1/traces"
    );
    // OTEL_EXPORTER_OTLP_ENDPOINT: a base, v1/traces appended for HTTP only.
    assert_eq!(
        url(HttpProtobuf, Some("http://c:4318"), None),
        "http://c:4318/v1/traces"
    );
    assert_eq!(
        url(HttpProtobuf, Some("http://c:4318/"), None),
        "http://c:4318/v1/traces"
    );
    assert_eq!(
        url(HttpProtobuf, Some("http://c:4318/mypath"), None),
        "http://c:4318/mypath/v1/traces"
    );
    assert_eq!(url(Grpc, Some("http://c:4317"), None), "http://c:4317");
    assert_eq!(url(Grpc, Some("http://c:4317/"), None), "http://c:4317/");
    // OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: as is, and it wins.
    assert_eq!(
        url(
            HttpProtobuf,
            Some("http://base:1"),
            Some("http://c:4318/custom")
        ),
        "http://c:4318/custom"
    );
    assert_eq!(
        url(HttpProtobuf, None, Some("http://c:4318")),
        "http://c:4318"
    );
    assert_eq!(
        url(Grpc, Some("http://base:1"), Some("http://c:9999")),
        "http://c:9999"
    );
    // Empty means unset; no scheme means http.
    assert_eq!(
        url(HttpProtobuf, Some("http://c:1"), Some("")),
        "http://c:1/v1/traces"
    );
    assert_eq!(
        url(Grpc, Some("collector:4317"), None),
        "http://collector:4317"
    );
    let full = OtlpConfig::resolve(HttpProtobuf, None, Some("http://x/y"));
    assert!(full.traces_endpoint_is_full);
    assert_eq!(full.endpoint, "http://x/y");
    assert!(!OtlpConfig::resolve(HttpProtobuf, Some("http://x"), None).traces_endpoint_is_full);
}

#[test]
fn from_command_line() {
    use clap::Parser;
    let parse = |args: &[&str]| {
        let config =
            crate::config::Config::try_parse_from([&["ztrace"], args].concat()).expect("args");
        OtlpConfig::from_config(&config)
    };
    // Only meaningful when the test's own environment sets no OTLP variable.
    if std::env::vars().any(|(k, _)| k.starts_with("OTEL_EXPORTER_OTLP")) {
        return;
    }
    assert_eq!(parse(&[]).expect("ok"), None);
    let c = parse(&["--otlp-endpoint", "http://c:4318"])
        .expect("ok")
        .expect("on");
    assert_eq!(
        (c.protocol, c.traces_url()),
        (
            OtlpProtocol::HttpProtobuf,
            "http://c:4318/v1/traces".to_owned()
        )
    );
    let c = parse(&["--otlp-endpoint", "http://c:4317"])
        .expect("ok")
        .expect("on");
    assert_eq!(
        (c.protocol, c.traces_url()),
        (OtlpProtocol::Grpc, "http://c:4317".to_owned())
    );
    let c = parse(&[
        "--otlp-endpoint",
        "http://c:9",
        "--otlp-protocol",
        "http/protobuf",
        "--otlp-headers",
        "x-a=1",
    ])
    .expect("ok")
    .expect("on");
    assert_eq!(
        (c.protocol, c.traces_url()),
        (
            OtlpProtocol::HttpProtobuf,
            "http://c:9/v1/traces".to_owned()
        )
    );
    assert_eq!(c.headers, [("x-a".to_owned(), "1".to_owned())]);
    let c = parse(&["--otlp-traces-endpoint", "http://c:4318/t"])
        .expect("ok")
        .expect("on");
    assert_eq!(
        (c.protocol, c.traces_url()),
        (OtlpProtocol::HttpProtobuf, "http://c:4318/t".to_owned())
    );
    assert!(parse(&["--otlp-endpoint", "http://c:1", "--otlp-headers", "nokey"]).is_err());
}

#[test]
fn backoff_grows_with_jitter_and_is_capped() {
    for attempt in 1..=20 {
        let exp = INITIAL_BACKOFF
            .saturating_mul(1 << (attempt - 1).min(16))
            .min(MAX_BACKOFF);
        let d = backoff(attempt);
        assert!(
            d >= exp / 2 && d <= exp,
            "attempt {attempt}: {d:?} outside [{:?}, {exp:?}]",
            exp / 2
        );
    }
    assert!(backoff(30) <= MAX_BACKOFF);
}

#[test]
fn spawn_outside_runtime_fails() {
    let err = spawn(OtlpConfig::default(), Arc::default()).expect_err("no runtime");
    assert!(matches!(err, ExportError::NoRuntime));
}

#[tokio::test]
async fn spawn_rejects_bad_config() {
    let bad = |f: fn(&mut OtlpConfig)| {
        let mut c = OtlpConfig::default();
        f(&mut c);
        spawn(c, Arc::default()).map(|_| ()).expect_err("accepted")
    };
    assert!(matches!(
        bad(|c| c.endpoint = "https://c:4317".into()),
        ExportError::InvalidEndpoint { .. }
    ));
    assert!(matches!(
        bad(|c| c.endpoint = "ftp://c".into()),
        ExportError::InvalidEndpoint { .. }
    ));
    assert!(matches!(
        bad(|c| c.endpoint = "http://".into()),
        ExportError::InvalidEndpoint { .. }
    ));
    assert!(matches!(
        bad(|c| c.queue_spans = 0),
        ExportError::InvalidConfig(_)
    ));
    assert!(matches!(
        bad(|c| c.batch_spans = 0),
        ExportError::InvalidConfig(_)
    ));
    assert!(matches!(
        bad(|c| c.headers = vec![("x-a".into(), "é".into())]),
        ExportError::InvalidHeader(_)
    ));
    assert!(matches!(
        bad(|c| c.headers = vec![("x-a-bin".into(), "v".into())]),
        ExportError::InvalidHeader(_)
    ));
}

// ---- the exporter against a scripted HTTP server -------------------------------------------

fn span(n: u8, resource: &Arc<Resource>) -> Span {
    Span {
        trace_id: [n; 16],
        span_id: [n; 8],
        parent_span_id: (n > 1).then_some([1; 8]),
        kind: SpanKind::Server,
        start_unix_nano: 1_000 * u64::from(n),
        end_unix_nano: 1_000 * u64::from(n) + 500,
        status: if n == 3 {
            StatusCode::Error
        } else {
            StatusCode::Unset
        },
        status_message: (n == 3).then(|| "server error".to_owned()),
        attributes: vec![
            Attribute::new("http.request.method", "GET"),
            Attribute::new(
                "http.response.status_code",
                if n == 3 { 500_i64 } else { 200 },
            ),
        ],
        ..testing::span(&format!("GET /item/{n}"), resource)
    }
}

#[derive(Debug)]
struct Recorded {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Recorded {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One scripted answer per connection (the server closes each); after the script, 200.
async fn http_server(script: Vec<(u16, Vec<u8>)>) -> (String, mpsc::UnboundedReceiver<Recorded>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut script = script.into_iter();
        while let Ok((mut sock, _)) = listener.accept().await {
            let Some(request) = read_request(&mut sock).await else {
                continue;
            };
            let (status, body) = script.next().unwrap_or((200, Vec::new()));
            let head = format!(
                "HTTP/1.1 {status} Scripted\r\ncontent-type: application/x-protobuf\r\n\
                 content-length: {}\r\nretry-after: 0\r\nconnection: close\r\n\r\n",
                body.len()
            );
            let _ = sock.write_all(head.as_bytes()).await;
            let _ = sock.write_all(&body).await;
            let _ = sock.shutdown().await;
            let _ = tx.send(request);
        }
    });
    (format!("http://{addr}"), rx)
}

async fn read_request(sock: &mut tokio::net::TcpStream) -> Option<Recorded> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = sock.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        if let httparse::Status::Complete(head_len) = req.parse(&buf).ok()? {
            let headers: Vec<(String, String)> = req
                .headers
                .iter()
                .map(|h| {
                    (
                        h.name.to_owned(),
                        String::from_utf8_lossy(h.value).into_owned(),
                    )
                })
                .collect();
            let len: usize = headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                .and_then(|(_, v)| v.parse().ok())
                .unwrap_or(0);
            let method = req.method?.to_owned();
            let path = req.path?.to_owned();
            while buf.len() < head_len + len {
                let n = sock.read(&mut chunk).await.ok()?;
                if n == 0 {
                    return None;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            return Some(Recorded {
                method,
                path,
                headers,
                body: buf[head_len..head_len + len].to_vec(),
            });
        }
    }
}

fn http_config(endpoint: &str) -> OtlpConfig {
    OtlpConfig {
        endpoint: endpoint.to_owned(),
        protocol: OtlpProtocol::HttpProtobuf,
        headers: vec![("x-ztrace-test".to_owned(), "hello world".to_owned())],
        queue_spans: 64,
        batch_spans: 3,
        batch_timeout: Duration::from_secs(3600),
        traces_endpoint_is_full: false,
    }
}

async fn next(rx: &mut mpsc::UnboundedReceiver<Recorded>) -> Recorded {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("request in time")
        .expect("server alive")
}

async fn finish(handle: ExportHandle, task: JoinHandle<()>) {
    drop(handle);
    tokio::time::timeout(SHUTDOWN_GRACE + Duration::from_secs(2), task)
        .await
        .expect("exporter ends within the grace period")
        .expect("exporter task did not panic");
}

fn load(c: &std::sync::atomic::AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

fn string(v: &Option<opentelemetry_proto::tonic::common::v1::AnyValue>) -> Option<&str> {
    match v.as_ref()?.value.as_ref()? {
        Value::StringValue(s) => Some(s),
        _ => None,
    }
}

#[tokio::test]
async fn http_export_retries_503_then_delivers_grouped_spans() {
    let (endpoint, mut requests) = http_server(vec![(503, b"busy".to_vec())]).await;
    let metrics = Arc::new(Metrics::default());
    let (handle, task) = spawn(http_config(&endpoint), Arc::clone(&metrics)).expect("spawn");
    let (a, b) = (resource("orders", 10), resource("db", 20));
    handle.send(span(1, &a));
    handle.send(span(2, &b));
    handle.send(span(3, &a)); // batch full: sent now

    let first = next(&mut requests).await;
    let second = next(&mut requests).await;
    for r in [&first, &second] {
        assert_eq!(r.method, "POST");
        assert_eq!(r.path, "/v1/traces");
        assert_eq!(r.header("content-type"), Some("application/x-protobuf"));
        assert_eq!(r.header("x-ztrace-test"), Some("hello world"));
    }
    assert_eq!(first.body, second.body, "the retry resends the same batch");
    finish(handle, task).await;
    assert_eq!(load(&metrics.export_errors), 1);
    assert_eq!(load(&metrics.spans_exported), 3);
    assert_eq!(load(&metrics.spans_export_failed), 0);
    assert_eq!(load(&metrics.spans_dropped_queue_full), 0);

    let req = ExportTraceServiceRequest::decode(second.body.as_slice()).expect("protobuf body");
    assert_eq!(req.resource_spans.len(), 2);
    let services: Vec<_> = req
        .resource_spans
        .iter()
        .map(|rs| {
            string(&rs.resource.as_ref().expect("resource").attributes[0].value).map(str::to_owned)
        })
        .collect();
    assert_eq!(services, [Some("orders".to_owned()), Some("db".to_owned())]);
    let orders = &req.resource_spans[0].scope_spans[0];
    assert_eq!(
        orders.scope.as_ref().map(|s| s.name.as_str()),
        Some("ztrace")
    );
    let names: Vec<&str> = orders.spans.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["GET /item/1", "GET /item/3"]);
    let s3 = &orders.spans[1];
    assert_eq!(s3.trace_id, [3; 16]);
    assert_eq!(s3.span_id, [3; 8]);
    assert_eq!(s3.parent_span_id, [1; 8]);
    assert_eq!(s3.kind, 2);
    assert_eq!(
        (s3.start_time_unix_nano, s3.end_time_unix_nano),
        (3_000, 3_500)
    );
    assert_eq!(
        s3.status.as_ref().map(|s| (s.code, s.message.as_str())),
        Some((2, "server error"))
    );
    assert!(orders.spans[0].parent_span_id.is_empty());
    let db = &req.resource_spans[1].scope_spans[0].spans;
    assert_eq!(db.len(), 1);
    assert_eq!(db[0].name, "GET /item/2");
}

#[tokio::test]
async fn http_batch_timeout_and_partial_success() {
    let partial = ExportTraceServiceResponse {
        partial_success: Some(ExportTracePartialSuccess {
            rejected_spans: 1,
            error_message: "too old".into(),
        }),
    };
    let (endpoint, mut requests) = http_server(vec![(200, partial.encode_to_vec())]).await;
    let metrics = Arc::new(Metrics::default());
    let config = OtlpConfig {
        batch_spans: 100,
        batch_timeout: Duration::from_millis(50),
        ..http_config(&endpoint)
    };
    let (handle, task) = spawn(config, Arc::clone(&metrics)).expect("spawn");
    let r = resource("a", 1);
    handle.send(span(1, &r));
    handle.send(span(2, &r));
    let req = next(&mut requests).await; // sent by the timer, not by size
    let body = ExportTraceServiceRequest::decode(req.body.as_slice()).expect("protobuf");
    assert_eq!(body.resource_spans[0].scope_spans[0].spans.len(), 2);
    finish(handle, task).await;
    assert_eq!(load(&metrics.spans_exported), 1);
    assert_eq!(load(&metrics.spans_export_failed), 1);
    assert_eq!(load(&metrics.export_errors), 0);
}

#[tokio::test]
async fn http_permanent_error_is_not_retried() {
    let (endpoint, mut requests) = http_server(vec![(400, b"bad".to_vec())]).await;
    let metrics = Arc::new(Metrics::default());
    let (handle, task) = spawn(http_config(&endpoint), Arc::clone(&metrics)).expect("spawn");
    let r = resource("a", 1);
    for n in 1..=3 {
        handle.send(span(n, &r));
    }
    let _ = next(&mut requests).await;
    finish(handle, task).await;
    assert!(requests.try_recv().is_err(), "no retry after 400");
    assert_eq!(load(&metrics.export_errors), 1);
    assert_eq!(load(&metrics.spans_export_failed), 3);
    assert_eq!(load(&metrics.spans_exported), 0);
}

#[tokio::test]
async fn shutdown_flushes_a_partial_batch() {
    let (endpoint, mut requests) = http_server(Vec::new()).await;
    let metrics = Arc::new(Metrics::default());
    let config = OtlpConfig {
        batch_spans: 100,
        ..http_config(&endpoint)
    };
    let (handle, task) = spawn(config, Arc::clone(&metrics)).expect("spawn");
    let other = handle.clone();
    let r = resource("a", 1);
    for n in 1..=5 {
        handle.send(span(n, &r));
    }
    handle.shutdown(); // `other` still alive: shutdown does not wait for every handle
    tokio::time::timeout(SHUTDOWN_GRACE + Duration::from_secs(2), task)
        .await
        .expect("ends in time")
        .expect("no panic");
    let req = next(&mut requests).await;
    let body = ExportTraceServiceRequest::decode(req.body.as_slice()).expect("protobuf");
    assert_eq!(body.resource_spans[0].scope_spans[0].spans.len(), 5);
    assert_eq!(load(&metrics.spans_exported), 5);
    other.send(span(6, &r)); // after the end: dropped and counted, no panic
    assert_eq!(load(&metrics.spans_dropped_queue_full), 1);
}

/// A port where nothing listens.
async fn dead_endpoint() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    format!("http://{addr}")
}

#[tokio::test]
async fn dead_endpoint_never_blocks_and_accounts_every_span() {
    for protocol in [OtlpProtocol::Grpc, OtlpProtocol::HttpProtobuf] {
        let metrics = Arc::new(Metrics::default());
        let config = OtlpConfig {
            endpoint: dead_endpoint().await,
            protocol,
            queue_spans: 8,
            batch_spans: 4,
            ..OtlpConfig::default()
        };
        let (handle, task) = spawn(config, Arc::clone(&metrics)).expect("spawn does not connect");
        let r = resource("a", 1);
        let started = std::time::Instant::now();
        for _ in 0..10_000 {
            handle.send(span(1, &r));
        }
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "send blocked: {:?}",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        finish(handle, task).await;
        let dropped = load(&metrics.spans_dropped_queue_full);
        let failed = load(&metrics.spans_export_failed);
        assert!(dropped >= 10_000 - 12, "{protocol}: only {dropped} dropped");
        assert_eq!(
            dropped + failed,
            10_000,
            "{protocol}: every span is exported, failed or dropped"
        );
        assert_eq!(load(&metrics.spans_exported), 0);
        assert!(
            load(&metrics.export_errors) >= 1,
            "{protocol}: attempts counted"
        );
    }
}
