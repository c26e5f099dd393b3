//! `traceparent` added by the kernel to plaintext HTTP/1 requests (issue 16,
//! `ebpf/src/inject.rs`). Two simulated hosts (`hosts::Hosts`); ztrace runs on host 1 only.
//!
//! - Interop: an untouched Python service A on host 1, traced by ztrace, calls a service on
//!   host 2 instrumented with the OpenTelemetry SDK (WSGI middleware, OTLP exporter): the SDK's
//!   SERVER span is the child of ztrace's CLIENT span of A (same trace, parent = that span's
//!   id), both in the one OTLP receiver.
//! - Byte-exactness: a client on host 1 sends requests in chosen pieces (`rawhttp.py`) to a
//!   server on host 2 that records every byte it received. Removing the one header line ztrace
//!   adds right after a request line gives back exactly the bytes sent; where nothing may be
//!   added (a head split across writes, a request with a `traceparent`, the later requests of
//!   a pipelined batch, bodies — also after `100 Continue` —) nothing is; and the header's ids
//!   are the ids of the CLIENT span ztrace exported for that request.

use std::time::Duration;

use ztrace_e2e::hosts::{Host, Hosts};
use ztrace_e2e::otlp::{OtlpReceiver, OtlpSpan};
use ztrace_e2e::process::Proc;
use ztrace_e2e::{fixture, free_port, python, TempDir, Ztrace};

const READY: Duration = Duration::from_secs(20);
const SPANS: Duration = Duration::from_secs(30);
const CLIENT: &str = "SPAN_KIND_CLIENT";
const SERVER: &str = "SPAN_KIND_SERVER";

/// Host 1's agent: only its cgroup, exporting to `otlp`.
fn agent(host: &Host, otlp: &OtlpReceiver) -> Ztrace {
    let cgroup = host.cgroup.to_string_lossy().into_owned();
    let endpoint = otlp.grpc_endpoint();
    let mut z = Ztrace::start(&[
        "--cgroup",
        &cgroup,
        "--otlp-endpoint",
        &endpoint,
        "--stacks=off",
    ]);
    z.wait_for_log("sk_msg on client sockets: traceparent added", READY);
    z
}

#[test]
#[ignore = "needs root and eBPF; run by cargo xtask test"]
fn an_sdk_instrumented_service_continues_ztraces_trace() {
    let hosts = Hosts::two();
    let (h1, h2) = (hosts.get(0), hosts.get(1));
    let mut otlp = OtlpReceiver::start();
    let z1 = agent(h1, &otlp);

    let sdk_port = free_port();
    let mut cmd = h2.command(python());
    cmd.arg("-u").arg(fixture("sdk_service.py")).args([
        "--bind",
        &h2.addr.to_string(),
        "--port",
        &sdk_port.to_string(),
        "--otlp",
        &otlp.grpc_unix_endpoint(),
    ]);
    let mut sdk = Proc::spawn("sdk", &mut cmd);
    sdk.wait_for_stdout("ready", READY);

    let a_port = free_port();
    let mut cmd = h1.command(python());
    cmd.arg("-u")
        .arg(fixture("xhost.py"))
        .args([
            "server",
            "--bind",
            &h1.addr.to_string(),
            "--port",
            &a_port.to_string(),
            "--call",
            &h2.url(sdk_port, "/sdk"),
        ])
        .env("OTEL_SERVICE_NAME", "a");
    let mut a = Proc::spawn("a", &mut cmd);
    a.wait_for_stdout("ready", READY);

    let mut cmd = h1.command(python());
    cmd.arg("-u")
        .arg(fixture("xhost.py"))
        .args([
            "request",
            "--url",
            &h1.url(a_port, "/a"),
            "--body-size",
            "5000",
        ])
        .env("OTEL_SERVICE_NAME", "client");
    let mut client = Proc::spawn("client", &mut cmd);
    assert!(
        client.wait_exit(READY).is_some_and(|s| s.success()),
        "client failed: {}",
        client.describe()
    );
    let lines = client.stdout_lines();
    let sent = lines
        .last()
        .and_then(|l| l.strip_prefix("sent "))
        .unwrap_or("?");
    assert_eq!(
        lines.len(),
        3,
        "a's hash, the SDK service's hash, the hash sent: {lines:?}"
    );
    assert!(
        lines[..2].iter().all(|h| h == sent),
        "both services received the exact body: {lines:?}"
    );

    let wanted = |s: &OtlpSpan| {
        matches!(
            (s.resource_str("service.name"), s.kind()),
            (Some("a"), Some(CLIENT)) | (Some("sdk"), Some(SERVER))
        )
    };
    let spans = otlp.wait_for_spans(2, wanted, SPANS);
    drop((a, sdk));
    let s1 = z1.stop();
    let report = format!("{:#?}\nhost 1: {:?}", otlp.spans(), s1.stats);
    let a_client = spans
        .iter()
        .find(|s| s.kind() == Some(CLIENT))
        .unwrap_or_else(|| panic!("no CLIENT span of a:\n{report}"));
    let sdk_server = spans
        .iter()
        .find(|s| s.kind() == Some(SERVER))
        .unwrap_or_else(|| panic!("no SERVER span of the SDK service:\n{report}"));
    assert_eq!(
        sdk_server.trace_id(),
        a_client.trace_id(),
        "one trace:\n{report}"
    );
    assert_eq!(
        sdk_server.parent(),
        a_client.span_id(),
        "the SDK's span is the child of ztrace's CLIENT span:\n{report}"
    );
    assert!(
        s1.stat("kernel_inject_added") >= 1,
        "host 1 counted the header it added:\n{report}"
    );
}

/// The bytes each connection of the recording server received, one entry per connection.
fn received(out: &std::path::Path) -> Vec<Vec<u8>> {
    std::fs::read_to_string(out)
        .unwrap_or_default()
        .lines()
        .map(|l| unhex(l.trim()))
        .collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).expect("hex"))
        .collect()
}

/// A header ztrace adds: `traceparent: 00-<32 hex>-<16 hex>-01\r\n`, 70 bytes.
fn is_added_header(line: &[u8]) -> bool {
    let hex = |b: &[u8]| {
        b.iter()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
    };
    line.len() == 70
        && line.starts_with(b"traceparent: 00-")
        && hex(&line[16..48])
        && line[48] == b'-'
        && hex(&line[49..65])
        && line.ends_with(b"-01\r\n")
}

/// `bytes` without the header lines that directly follow a request line (`... HTTP/1.1\r\n`),
/// and for each one removed: the request line's path, and the header's (trace id, span id).
fn strip_added(bytes: &[u8]) -> (Vec<u8>, Vec<(String, String, String)>) {
    let mut out = Vec::with_capacity(bytes.len());
    let mut added = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let end = bytes[i..]
            .windows(2)
            .position(|w| w == b"\r\n")
            .map_or(bytes.len(), |p| i + p + 2);
        let line = &bytes[i..end];
        out.extend_from_slice(line);
        i = end;
        if line.ends_with(b" HTTP/1.1\r\n")
            && bytes.len() >= i + 70
            && is_added_header(&bytes[i..i + 70])
        {
            let h = String::from_utf8_lossy(&bytes[i..i + 70]).into_owned();
            let path = String::from_utf8_lossy(line)
                .split(' ')
                .nth(1)
                .unwrap_or("")
                .to_owned();
            added.push((path, h[16..48].to_owned(), h[49..65].to_owned()));
            i += 70;
        }
    }
    (out, added)
}

#[test]
#[ignore = "needs root and eBPF; run by cargo xtask test"]
fn requests_leave_byte_for_byte_but_for_the_one_header_added() {
    let hosts = Hosts::two();
    let (h1, h2) = (hosts.get(0), hosts.get(1));
    let mut otlp = OtlpReceiver::start();
    let z1 = agent(h1, &otlp);
    let dir = TempDir::new("inject-bytes");
    let out = dir.join("received.txt");
    let port = free_port();
    let mut cmd = h2.command(python());
    cmd.arg("-u")
        .arg(fixture("rawhttp.py"))
        .args([
            "server",
            "--bind",
            &h2.addr.to_string(),
            "--port",
            &port.to_string(),
            "--out",
        ])
        .arg(&out);
    let mut server = Proc::spawn("recording server", &mut cmd);
    server.wait_for_stdout("ready", READY);

    // (case, the request paths that must get a header, in order)
    let cases: &[(&str, &[&str])] = &[
        ("plain", &["/plain"]),
        ("keepalive", &["/ka1", "/ka2"]),
        ("split_head", &[]),
        ("split_line", &[]),
        ("pipelined", &["/p1"]),
        ("continue", &["/continue"]),
        ("body", &["/body"]),
        ("body_later", &["/body_later"]),
        ("has_traceparent", &[]),
    ];
    let mut sent_by_case = Vec::new();
    for (case, _) in cases {
        let mut cmd = h1.command(python());
        cmd.arg("-u").arg(fixture("rawhttp.py")).args([
            "client",
            "--host",
            &h2.addr.to_string(),
            "--port",
            &port.to_string(),
            "--case",
            case,
        ]);
        let mut client = Proc::spawn(case, &mut cmd);
        assert!(
            client.wait_exit(READY).is_some_and(|s| s.success()),
            "client {case} failed: {}",
            client.describe()
        );
        let sent = client
            .stdout_lines()
            .iter()
            .find_map(|l| l.strip_prefix("sent ").map(unhex))
            .unwrap_or_else(|| panic!("{case} printed nothing: {}", client.describe()));
        sent_by_case.push(sent);
    }
    // Every client closed its connection; the server writes each one down at its end.
    let deadline = std::time::Instant::now() + READY;
    while received(&out).len() < cases.len() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let got = received(&out);
    assert_eq!(got.len(), cases.len(), "one record per connection");

    // 12 requests: plain 1, keepalive 2, split 2, pipelined 3, continue, bodies 2, has 1.
    let client_spans = otlp.wait_for_spans(12, |s| s.kind() == Some(CLIENT), SPANS);
    drop(server);
    let s1 = z1.stop();
    let report = format!("host 1: {:?}", s1.stats);
    for ((case, expected_paths), sent) in cases.iter().zip(&sent_by_case) {
        // Each connection's bytes, found by what they become without the added lines.
        let (received, added) = got
            .iter()
            .map(|r| (r, strip_added(r)))
            .find(|(_, (stripped, _))| stripped == sent)
            .map(|(r, (_, added))| (r.clone(), added))
            .unwrap_or_else(|| {
                panic!(
                    "{case}: no connection received the bytes sent (plus added headers): sent {:?}\nreceived {:#?}\n{report}",
                    String::from_utf8_lossy(sent),
                    got.iter().map(|r| String::from_utf8_lossy(r)).collect::<Vec<_>>()
                )
            });
        let paths: Vec<&str> = added.iter().map(|(p, _, _)| p.as_str()).collect();
        assert_eq!(
            paths,
            *expected_paths,
            "{case}: where a header was added:\n{}\n{report}",
            String::from_utf8_lossy(&received)
        );
        if expected_paths.is_empty() {
            assert_eq!(&received, sent, "{case}: not a byte changed");
        }
        // The header's ids are those of the CLIENT span ztrace exported for that request.
        for (path, trace_id, span_id) in &added {
            let span = client_spans
                .iter()
                .find(|s| s.span_id() == Some(span_id.as_str()))
                .unwrap_or_else(|| {
                    panic!("{case}: no CLIENT span with the header's span id {span_id}:\n{client_spans:#?}")
                });
            assert_eq!(span.trace_id(), Some(trace_id.as_str()), "{case}");
            assert_eq!(span.attr_str("url.path"), Some(path.as_str()), "{case}");
        }
    }
    assert_eq!(s1.stat("kernel_inject_added"), 7, "{report}");
    assert_eq!(s1.stat("kernel_inject_head_split"), 2, "{report}");
    assert_eq!(s1.stat("kernel_inject_had_traceparent"), 1, "{report}");
    assert_eq!(s1.stat("kernel_inject_failed"), 0, "{report}");
}

/// The added header's (trace id, span id) in each connection the recording server wrote down.
fn headers_received(out: &std::path::Path) -> Vec<(String, String)> {
    received(out)
        .iter()
        .flat_map(|r| strip_added(r).1)
        .map(|(_, trace, span)| (trace, span))
        .collect()
}

#[test]
#[ignore = "needs root and eBPF; run by cargo xtask test"]
fn on_one_host_the_added_header_gives_way_to_the_same_host_rules() {
    // Everything on host 1, traced by its ztrace: curl → a (Python) → a recording server.
    let hosts = Hosts::two();
    let h1 = hosts.get(0);
    let mut otlp = OtlpReceiver::start();
    let z1 = agent(h1, &otlp);
    let dir = TempDir::new("inject-local");
    let out = dir.join("received.txt");
    let rec_port = free_port();
    let mut cmd = h1.command(python());
    cmd.arg("-u")
        .arg(fixture("rawhttp.py"))
        .args([
            "server",
            "--bind",
            &h1.addr.to_string(),
            "--port",
            &rec_port.to_string(),
            "--out",
        ])
        .arg(&out)
        .env("OTEL_SERVICE_NAME", "rec");
    let mut rec = Proc::spawn("recording server", &mut cmd);
    rec.wait_for_stdout("ready", READY);
    let a_port = free_port();
    let mut cmd = h1.command(python());
    cmd.arg("-u")
        .arg(fixture("xhost.py"))
        .args([
            "server",
            "--bind",
            &h1.addr.to_string(),
            "--port",
            &a_port.to_string(),
            "--call",
            &h1.url(rec_port, "/rec"),
        ])
        .env("OTEL_SERVICE_NAME", "a");
    let mut a = Proc::spawn("a", &mut cmd);
    a.wait_for_stdout("ready", READY);
    let body = dir.join("body");
    std::fs::write(&body, vec![b'x'; 5000]).expect("body");
    // First a request without a header, then one with an application's header (an SDK's):
    // the kernel reads it as a reads the request, so a's call carries the header's trace on
    // the wire, the trace the thread rule puts the call in.
    const APP_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    let app_header = format!("traceparent: 00-{APP_TRACE}-00f067aa0ba902b7-01");
    for header in [None, Some(app_header.as_str())] {
        let mut cmd = h1.command("curl");
        cmd.args(["-sS", "-o", "/dev/null", "-w", "%{http_code}\n"]);
        if let Some(h) = header {
            cmd.args(["-H", h]);
        }
        cmd.arg("--data-binary")
            .arg(format!("@{}", body.display()))
            .arg(h1.url(a_port, "/a"));
        let mut curl = Proc::spawn("curl", &mut cmd);
        assert!(
            curl.wait_exit(READY).is_some_and(|s| s.success()),
            "curl failed: {}",
            curl.describe()
        );
        assert_eq!(curl.stdout_lines(), ["200"], "{}", curl.describe());
    }
    let deadline = std::time::Instant::now() + READY;
    while headers_received(&out).len() < 2 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let headers = headers_received(&out);
    let wanted = |s: &OtlpSpan| {
        matches!(
            (s.resource_str("service.name"), s.kind()),
            (Some("a"), Some(CLIENT)) | (Some("rec"), Some(SERVER))
        )
    };
    let spans = otlp.wait_for_spans(4, wanted, SPANS);
    drop((a, rec));
    let s1 = z1.stop();
    let report = format!("{spans:#?}\nheaders {headers:?}\nhost 1: {:?}", s1.stats);
    assert_eq!(
        headers.len(),
        2,
        "the recording server saw both added headers:\n{report}"
    );
    let calls: Vec<&OtlpSpan> = spans.iter().filter(|s| s.kind() == Some(CLIENT)).collect();
    assert_eq!(calls.len(), 2, "{report}");
    for call in calls {
        let span_id = call.span_id().expect("span id");
        // The header's span id is the CLIENT span's: the server's parent.
        let (wire_trace, _) = headers
            .iter()
            .find(|(_, s)| s == span_id)
            .unwrap_or_else(|| panic!("no header names the call {span_id}:\n{report}"));
        let server = spans
            .iter()
            .find(|s| s.kind() == Some(SERVER) && s.parent() == Some(span_id))
            .unwrap_or_else(|| panic!("no rec span is the child of {span_id}:\n{report}"));
        assert_eq!(server.trace_id(), call.trace_id(), "one trace:\n{report}");
        assert_eq!(
            server.attr_str("ztrace.link"),
            Some("connection"),
            "the added header is not the application's:\n{report}"
        );
        // The head grew by the header, the body did not.
        assert_eq!(
            server.attr_i64("http.request.body.size"),
            Some(5000),
            "{report}"
        );
        assert_eq!(
            call.attr_i64("http.request.body.size"),
            Some(5000),
            "{report}"
        );
        // The wire's ids are exactly the span's, the application's trace included.
        assert_eq!(call.trace_id(), Some(wire_trace.as_str()), "{report}");
    }
    assert!(
        spans.iter().any(|s| s.trace_id() == Some(APP_TRACE)),
        "the second call joined the application's trace:\n{report}"
    );
    assert_eq!(
        s1.stat("kernel_propagate_server_from_header"),
        1,
        "{report}"
    );
    assert_eq!(s1.stat("propagation_trace_mismatch"), 0, "{report}");
    assert!(s1.stat("kernel_inject_added") >= 2, "{report}");
}
