//! The embedded store and the trace viewer end to end: real traffic through the real agent, then
//! the JSON API (field by field against the `--print=json` spans of the same run), a restart
//! that must keep the trace, the page itself in headless Chromium, `--no-ui`, and a damaged
//! database that must not stop capture.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use ztrace_e2e::checks::{self, Emitter, Exchange};
use ztrace_e2e::clients::{self, get_local as get};
use ztrace_e2e::servers::Server;
use ztrace_e2e::ztrace::SPAN_TIMEOUT;
use ztrace_e2e::{free_port, repo_root, wait_until, Span, TempDir, Ztrace};

const HTTP_SERVER: &[&str] = &["http.server"];
const CURL: &[&str] = &["curl"];
/// How long a span may take from the wire to the viewer's API.
const STORE_TIMEOUT: Duration = Duration::from_secs(10);

/// `GET` that must answer 200 with JSON.
fn get_json(port: u16, path: &str) -> Value {
    let (status, body) = get(port, path);
    assert_eq!(status, 200, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: not JSON ({e}): {body}"))
}

/// The trace list rows (`/api/traces?{query}`) whose trace id is `trace_id`, waiting for it.
fn wait_for_listed(port: u16, query: &str, trace_id: &str) -> Value {
    let path = format!("/api/traces?{query}");
    wait_until(STORE_TIMEOUT, || {
        let list = get_json(port, &path);
        list.as_array()?
            .iter()
            .find(|t| t["trace_id"] == trace_id)
            .cloned()
    })
    .unwrap_or_else(|| {
        panic!(
            "trace {trace_id} not listed by {path} within {STORE_TIMEOUT:?}: {}",
            get(port, &path).1
        )
    })
}

fn ids(list: &Value) -> Vec<&str> {
    list.as_array()
        .map(|a| a.iter().filter_map(|t| t["trace_id"].as_str()).collect())
        .unwrap_or_default()
}

fn ui_args(port: u16, data: &Path) -> Vec<String> {
    vec![
        "--print=json".into(),
        "--ui".into(),
        format!("127.0.0.1:{port}"),
        "--data-dir".into(),
        data.display().to_string(),
    ]
}

fn start_agent(args: &[String]) -> Ztrace {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Ztrace::start(&args)
}

/// One curl request to python http.server: the printed server and client spans.
fn one_request(ztrace: &mut Ztrace, server: &Server) -> (Span, Span, u32) {
    let run = clients::curl(&[server.url("/hello?x=1")]);
    assert_eq!(run.transfers[0].0, 200);
    let port = server.port;
    let spans = ztrace.wait_for_n_spans(2, |s| s.server_port() == Some(port), SPAN_TIMEOUT);
    let server_spans: Vec<&Span> = spans.iter().filter(|s| s.is_server()).collect();
    let client_spans: Vec<&Span> = spans.iter().filter(|s| s.is_client()).collect();
    assert_eq!(
        (server_spans.len(), client_spans.len()),
        (1, 1),
        "one server and one client span: {spans:?}"
    );
    (server_spans[0].clone(), client_spans[0].clone(), run.pid)
}

#[test]
#[ignore = "needs root and eBPF; run by cargo xtask test"]
fn api_serves_the_trace_of_a_request_and_keeps_it_across_a_restart() {
    let server = Server::python_http("127.0.0.1");
    let data = TempDir::new("viewer-data");
    let ui = free_port();
    let mut ztrace = start_agent(&ui_args(ui, data.path()));
    let (server_span, client_span, curl_pid) = one_request(&mut ztrace, &server);
    checks::linked(&client_span, &server_span);
    let trace_id = client_span.trace_id().expect("trace id").to_owned();

    // The list: one row for the request's trace, the DESIGN.md fields and nothing else.
    // The host is busy with other tests: look the trace up by id (and service).
    let row = wait_for_listed(
        ui,
        &format!("service=http.server&trace_id={trace_id}"),
        &trace_id,
    );
    let mut keys: Vec<&str> = row
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "duration_ns",
            "error",
            "root_name",
            "root_service",
            "span_count",
            "start_unix_nano",
            "trace_id"
        ],
        "{row}"
    );
    assert_eq!(
        row["root_service"], "curl",
        "the client span is the root: {row}"
    );
    assert_eq!(row["root_name"], "GET /hello", "{row}");
    assert_eq!(row["span_count"], 2, "{row}");
    assert_eq!(row["error"], false, "{row}");
    let start = client_span.start_unix_nano().expect("start");
    assert_eq!(row["start_unix_nano"].as_u64(), Some(start), "{row}");
    assert_eq!(
        row["duration_ns"].as_u64(),
        client_span.duration_nanos(),
        "the client span covers the server span: {row}"
    );

    // The trace: exactly the two printed spans, field by field.
    let trace = get_json(ui, &format!("/api/traces/{trace_id}"));
    assert_eq!(trace["trace_id"], trace_id.as_str());
    let spans = trace["spans"].as_array().expect("spans array");
    assert_eq!(spans.len(), 2, "{trace}");
    for printed in [&client_span, &server_span] {
        let stored = spans
            .iter()
            .find(|s| s["span_id"] == printed.0["span_id"])
            .unwrap_or_else(|| panic!("span {printed:?} not in {trace}"));
        let mut stored = stored.clone();
        // Only present on error spans; this request succeeded.
        assert!(stored.get("status_message").is_none(), "{stored}");
        stored
            .as_object_mut()
            .expect("object")
            .remove("status_message");
        assert_eq!(
            &stored, &printed.0,
            "the API span equals the --print=json span"
        );
    }
    let exchange = Exchange {
        method: "GET",
        name: "GET /hello",
        path: "/hello",
        status_code: 200,
        server_host: "127.0.0.1",
        server_port: server.port,
        client_host: "127.0.0.1",
    };
    let stored = |kind: &str| {
        Span(
            spans
                .iter()
                .find(|s| s["kind"] == kind)
                .cloned()
                .unwrap_or_default(),
        )
    };
    checks::server_span(
        &stored("server"),
        &exchange,
        &Emitter::new(HTTP_SERVER, server.pid()),
    );
    checks::client_span(&stored("client"), &exchange, &Emitter::new(CURL, curl_pid));

    // Filters.
    let has = |query: &str| {
        ids(&get_json(ui, &format!("/api/traces?{query}"))).contains(&trace_id.as_str())
    };
    assert!(has("name=hello&status=ok"), "name and status=ok match");
    assert!(
        has(&format!("trace_id={}", &trace_id[..8])),
        "trace id prefix"
    );
    assert!(has("since=5m&min_duration_ms=0"), "a recent time range");
    assert!(!has("status=error"), "status=error excludes it");
    assert!(!has("min_duration_ms=600000"), "min duration excludes it");
    assert!(
        !has("service=no-such-service"),
        "another service excludes it"
    );
    assert!(
        !has(&format!("until={start}")),
        "a range that ends before it"
    );
    let (status, _) = get(ui, &format!("/api/traces/{}", "0".repeat(31) + "1"));
    assert_eq!(status, 404, "an unknown trace is 404");
    let (status, _) = get(ui, "/api/traces?status=maybe");
    assert_eq!(status, 400);

    // Services: http.server answered at least this request.
    let services = get_json(ui, "/api/services?minutes=5");
    let http = services["services"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["service"] == "http.server"))
        .unwrap_or_else(|| panic!("http.server not in {services}"))
        .clone();
    assert_eq!(http["kind"], "server", "{http}");
    assert!(http["requests"].as_u64() >= Some(1), "{http}");
    assert!(http["p50_ns"].as_u64() > Some(0), "{http}");
    assert!(http["p99_ns"].as_u64() >= http["p50_ns"].as_u64(), "{http}");

    let stopped = ztrace.stop();
    assert!(
        stopped
            .stderr
            .contains(&format!("viewer: http://127.0.0.1:{ui}")),
        "the viewer line:\n{}",
        stopped.stderr
    );
    let stats = stopped.stats.expect("stats line");
    assert!(
        stats["store_spans_written"].as_u64() >= Some(2),
        "{stats:?}"
    );
    assert_eq!(stats["store_write_errors"].as_u64(), Some(0), "{stats:?}");

    // A restart on the same data directory still lists and serves the trace.
    let ui = free_port();
    let ztrace = start_agent(&ui_args(ui, data.path()));
    let again = wait_for_listed(ui, &format!("trace_id={trace_id}"), &trace_id);
    assert_eq!(again, row, "the same summary after a restart");
    let trace_again = get_json(ui, &format!("/api/traces/{trace_id}"));
    assert_eq!(trace_again, trace);
    ztrace.stop();
}

/// Where a test leaves files worth looking at (screenshots).
fn artifacts() -> PathBuf {
    let dir = repo_root().join("target/test-artifacts");
    std::fs::create_dir_all(&dir).expect("create target/test-artifacts");
    dir
}

/// Headless Chromium on `url`; `extra` chooses `--dump-dom` or `--screenshot=...`. Returns stdout.
fn chromium(url: &str, extra: &[&str]) -> String {
    let profile = TempDir::new("chromium");
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--hide-scrollbars",
            "--window-size=1400,700",
            "--virtual-time-budget=8000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(extra)
        .arg(url)
        .output()
        .expect("run chromium (Debian package `chromium`; `cargo xtask test` installs it)");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The attribute `name` of every element of `class` in a DOM dump, in document order.
fn attr_of_class(dom: &str, class: &str, name: &str) -> Vec<String> {
    dom.split('<')
        .filter(|tag| {
            tag.split_once('>').is_some_and(|(head, _)| {
                head.split("class=\"")
                    .nth(1)
                    .and_then(|rest| rest.split('"').next())
                    .is_some_and(|classes| classes.split(' ').any(|c| c == class))
            })
        })
        .filter_map(|tag| {
            let (head, _) = tag.split_once('>')?;
            let rest = head.split(&format!(" {name}=\"")).nth(1)?;
            Some(rest.split('"').next()?.to_owned())
        })
        .collect()
}

#[test]
#[ignore = "needs root, eBPF and chromium; run by cargo xtask test"]
fn the_page_lists_the_trace_draws_the_waterfall_and_opens_a_span() {
    let server = Server::python_http("127.0.0.1");
    let data = TempDir::new("viewer-data");
    let ui = free_port();
    let mut ztrace = start_agent(&ui_args(ui, data.path()));
    let (server_span, client_span, _) = one_request(&mut ztrace, &server);
    let trace_id = client_span.trace_id().expect("trace id").to_owned();
    let client_id = client_span.span_id().expect("span id").to_owned();
    let server_id = server_span.span_id().expect("span id").to_owned();
    wait_for_listed(ui, &format!("trace_id={trace_id}"), &trace_id);

    // The list, filtered to this request's server (the host is busy with other tests and
    // chromium's own requests are traced too).
    let base = format!("http://127.0.0.1:{ui}");
    let dom = chromium(
        &format!("{base}/#/?service=http.server&since=15m"),
        &["--dump-dom"],
    );
    let rows = attr_of_class(&dom, "trace-row", "data-trace-id");
    assert!(
        rows.contains(&trace_id),
        "trace row {trace_id} not on the page; rows: {rows:?}\n{}",
        &dom[..dom.len().min(4000)]
    );

    // The trace page: one bar per span, the server nested under the client; the span panel of
    // the server span with its attributes.
    let url = format!("{base}/#/trace/{trace_id}/{server_id}");
    let dom = chromium(&url, &["--dump-dom"]);
    let spans = attr_of_class(&dom, "span-row", "data-span-id");
    assert_eq!(
        spans,
        [client_id.clone(), server_id.clone()],
        "rows in tree order"
    );
    let depths = attr_of_class(&dom, "span-row", "data-depth");
    assert_eq!(
        depths,
        ["0", "1"],
        "the server span is nested under the client span"
    );
    let parents = attr_of_class(&dom, "span-row", "data-parent-span-id");
    assert_eq!(parents, [String::new(), client_id.clone()]);
    assert_eq!(
        attr_of_class(&dom, "wf-bar", "style").len(),
        2,
        "one bar per span"
    );
    assert!(dom.contains("id=\"span-panel\""), "the span panel");
    for (key, value) in [
        ("url.path", "\"/hello\""),
        ("http.response.status_code", "200"),
        ("http.request.method", "\"GET\""),
    ] {
        let needle = format!(
            "<tr data-key=\"{key}\"><td>{key}</td><td>{}</td></tr>",
            value.replace('"', "&quot;")
        );
        let plain = format!("<tr data-key=\"{key}\"><td>{key}</td><td>{value}</td></tr>");
        assert!(
            dom.contains(&needle) || dom.contains(&plain),
            "attribute {key}={value} in the span panel:\n{}",
            dom.split("span-panel").nth(1).unwrap_or(&dom)
        );
    }
    let shot = artifacts().join("viewer-trace.png");
    chromium(&url, &[&format!("--screenshot={}", shot.display())]);
    assert!(shot.is_file(), "screenshot {}", shot.display());
    let shot = artifacts().join("viewer-list.png");
    chromium(
        &format!("{base}/#/?service=http.server"),
        &[&format!("--screenshot={}", shot.display())],
    );
    ztrace.stop();
}

#[test]
#[ignore = "needs root and eBPF; run by cargo xtask test"]
fn no_ui_serves_nothing_and_keeps_no_store() {
    let data = TempDir::new("viewer-data");
    let ui = free_port();
    let ztrace = start_agent(&[
        "--no-ui".into(),
        "--ui".into(),
        format!("127.0.0.1:{ui}"),
        "--data-dir".into(),
        data.path().display().to_string(),
    ]);
    let (status, _) = get(ui, "/api/traces");
    assert_eq!(status, 0, "nothing listens on {ui}");
    let stopped = ztrace.stop();
    assert!(!stopped.stderr.contains("viewer:"), "{}", stopped.stderr);
    assert!(!data.join("ztrace.db").exists(), "no database with --no-ui");
}

#[test]
#[ignore = "needs root and eBPF; run by cargo xtask test"]
fn a_damaged_database_disables_the_store_but_not_capture() {
    let server = Server::python_http("127.0.0.1");
    let data = TempDir::new("viewer-data");
    std::fs::write(data.join("ztrace.db"), b"not a database ".repeat(1000)).expect("write");
    let ui = free_port();
    let mut ztrace = start_agent(&ui_args(ui, data.path()));
    // Capture goes on: the request still becomes spans.
    one_request(&mut ztrace, &server);
    let (status, body) = get(ui, "/api/traces");
    assert_eq!(status, 503, "the API says the store is off: {body}");
    let stopped = ztrace.stop();
    assert!(
        stopped.stderr.contains("the trace store is disabled")
            && stopped.stderr.contains("ztrace.db"),
        "a clear log line:\n{}",
        stopped.stderr
    );
}

/// `&amp;`, `&lt;`, `&gt;` and `&quot;` of a DOM dump back to text.
fn unescape(s: &str) -> String {
    s.replace("&quot;", "\"")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

#[test]
#[ignore = "needs root, eBPF and chromium; run by cargo xtask test"]
fn the_span_panel_shows_the_stack_one_frame_per_line() {
    let dir = TempDir::new("viewer-stack");
    let (binary, source) = clients::build_stack_client_c(dir.path());
    let server = Server::python_http("127.0.0.1");
    let ui = free_port();
    let mut args = ui_args(ui, &dir.join("data"));
    args.extend(["--exe", "stack_client", "--exe", "python3"].map(String::from));
    let mut ztrace = start_agent(&args);
    let run = Command::new(&binary)
        .arg(server.port.to_string())
        .output()
        .expect("run stack_client");
    assert!(
        run.status.success(),
        "stack_client failed: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    let port = server.port;
    let span = ztrace
        .wait_for_n_spans(
            1,
            |s| s.is_client() && s.server_port() == Some(port),
            SPAN_TIMEOUT,
        )
        .remove(0);
    let stack = span
        .attr_str("code.stacktrace")
        .expect("code.stacktrace")
        .to_owned();
    let function = span
        .attr_str("code.function.name")
        .expect("code.function.name");
    let line = span.attr_i64("code.line.number").expect("code.line.number");
    assert_eq!(function, "fetch_orders");
    let trace_id = span.trace_id().expect("trace id").to_owned();
    let span_id = span.span_id().expect("span id").to_owned();
    wait_for_listed(ui, &format!("trace_id={trace_id}"), &trace_id);

    let url = format!("http://127.0.0.1:{ui}/#/trace/{trace_id}/{span_id}");
    let dom = chromium(&url, &["--dump-dom"]);
    let panel = dom
        .split("id=\"span-panel\"")
        .nth(1)
        .unwrap_or_else(|| panic!("no span panel:\n{dom}"));
    // One list item per line of code.stacktrace, in order (innermost first).
    let frames: Vec<String> = attr_of_class(panel, "frame", "data-frame")
        .iter()
        .map(|f| unescape(f))
        .collect();
    let want: Vec<&str> = stack.lines().collect();
    assert_eq!(frames, want, "the stack's frames, one per line:\n{panel}");
    // The application frame is marked, and named above the list.
    let app = format!("fetch_orders ({}:{line})", source.display());
    assert_eq!(
        attr_of_class(panel, "app", "data-frame")
            .iter()
            .map(|f| unescape(f))
            .collect::<Vec<_>>(),
        [app]
    );
    assert!(
        panel.contains(&format!(
            "issued by <code>fetch_orders</code> at <code>{}:{line}</code>",
            source.display()
        )),
        "the panel names the issuing function:\n{panel}"
    );
    let shot = artifacts().join("viewer-stack.png");
    chromium(&url, &[&format!("--screenshot={}", shot.display())]);
    ztrace.stop();
}
