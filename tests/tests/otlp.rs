//! OTLP export end to end: the agent sends to a real receiver (grpcio + opentelemetry-proto,
//! `tests/otlp_receiver.py`) over gRPC and over HTTP/protobuf.

use std::time::Duration;

use ztrace_e2e::clients;
use ztrace_e2e::otlp::{OtlpReceiver, OtlpSpan};
use ztrace_e2e::servers::Server;
use ztrace_e2e::Ztrace;

/// Export is batched: allow for a few flush intervals.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(45);

fn export_and_check(
    protocol_args: &[&str],
    endpoint: impl Fn(&OtlpReceiver) -> String,
    transport: &str,
) {
    let mut receiver = OtlpReceiver::start();
    let server = Server::python_http("127.0.0.1");
    let endpoint = endpoint(&receiver);
    let mut args = vec!["--otlp-endpoint", endpoint.as_str()];
    args.extend_from_slice(protocol_args);
    let ztrace = Ztrace::start(&args);

    let run = clients::curl(&[server.url("/hello")]);
    assert_eq!(run.transfers[0].0, 200);

    let port = i64::from(server.port);
    let spans = receiver.wait_for_spans(
        2,
        |s| s.attr_i64("server.port") == Some(port),
        EXPORT_TIMEOUT,
    );
    let of_kind = |kind: &str| -> Vec<&OtlpSpan> {
        spans.iter().filter(|s| s.kind() == Some(kind)).collect()
    };
    let (servers, clients) = (of_kind("SPAN_KIND_SERVER"), of_kind("SPAN_KIND_CLIENT"));
    assert_eq!(
        (servers.len(), clients.len()),
        (1, 1),
        "one server and one client span:\n{spans:#?}"
    );
    let (server_span, client_span) = (servers[0], clients[0]);

    for span in [server_span, client_span] {
        assert_eq!(span.transport(), Some(transport), "transport: {span:?}");
        assert_eq!(
            span.attr_str("http.request.method"),
            Some("GET"),
            "http.request.method: {span:?}"
        );
        assert_eq!(
            span.attr_i64("http.response.status_code"),
            Some(200),
            "http.response.status_code: {span:?}"
        );
        let (start, end) = (span.start_time_unix_nano(), span.end_time_unix_nano());
        assert!(
            start.is_some_and(|s| s > 0) && end > start,
            "start/end times: {span:?}"
        );
        assert!(
            span.trace_id().is_some_and(|t| t.len() == 32),
            "trace_id: {span:?}"
        );
    }
    assert_eq!(
        server_span.name(),
        Some("GET /hello"),
        "name: {server_span:?}"
    );
    assert_eq!(
        server_span.attr_str("url.path"),
        Some("/hello"),
        "url.path: {server_span:?}"
    );
    assert_eq!(
        server_span.resource_str("service.name"),
        Some("http.server"),
        "resource service.name: {server_span:?}"
    );
    assert_eq!(
        client_span.resource_str("service.name"),
        Some("curl"),
        "resource service.name: {client_span:?}"
    );

    let stopped = ztrace.stop();
    if let Some(stats) = stopped.stats {
        let exported = stats
            .get("spans_exported")
            .and_then(serde_json::Value::as_u64);
        assert!(
            exported.is_some_and(|n| n >= 2),
            "spans_exported in {stats:?}"
        );
    }
}

#[test]
#[ignore = "needs root and eBPF; run by cargo xtask test"]
fn spans_are_exported_over_otlp_grpc() {
    export_and_check(&[], OtlpReceiver::grpc_endpoint, "grpc");
}

#[test]
#[ignore = "needs root and eBPF; run by cargo xtask test"]
fn spans_are_exported_over_otlp_http_protobuf() {
    export_and_check(
        &["--otlp-protocol", "http/protobuf"],
        OtlpReceiver::http_endpoint,
        "http",
    );
}
