//! gRPC end to end: grpc-go and grpcio (Python) servers and clients over h2c, traced by the real
//! agent with `--print=json`. Each call is a SERVER span in the server and a CLIENT span in the
//! client, named `package.Service/Method`, with `rpc.system.name` `grpc` and the status from the
//! trailers; error statuses follow the RPC conventions per side; on one host the client span is
//! the parent of the server span.
//!
//! grpcio (gRPC C-core) and Node write frames with `sendmsg`/`writev` of many iovecs; the kernel
//! side copies 8 segments per program and the rest through tail calls (`zt_iovecs_more`), so
//! every call of theirs is a span, named and with its status: the tests check exactly that.
//! (Before the tail calls, a header block among the segments past the 8th was lost with that
//! direction's HPACK table.)

use ztrace_e2e::grpc::{self, GrpcServer};
use ztrace_e2e::span::{list, split_by_kind};
use ztrace_e2e::ztrace::SPAN_TIMEOUT;
use ztrace_e2e::{Span, TempDir, Ztrace};

fn on_port(port: u16) -> impl Fn(&Span) -> bool {
    move |s| s.server_port() == Some(port) && s.attr_str("rpc.system.name") == Some("grpc")
}

/// The spans of `kind` for `method` among `spans`: exactly `n` of them.
fn calls<'a>(spans: &'a [Span], kind: &str, method: &str, n: usize) -> Vec<&'a Span> {
    let found: Vec<&Span> = spans
        .iter()
        .filter(|s| s.kind() == Some(kind) && s.name() == Some(method))
        .collect();
    assert_eq!(
        found.len(),
        n,
        "{n} {kind} span(s) {method}:\n{}",
        list(spans)
    );
    found
}

/// One call's span, exactly: kind, name, method, status code, span status, pid, port.
fn check(span: &Span, method: &str, code: &str, error: bool, pid: u32, port: u16) {
    let what = format!("{span:?}");
    assert_eq!(span.name(), Some(method), "{what}");
    assert_eq!(span.attr_str("rpc.system.name"), Some("grpc"), "{what}");
    assert_eq!(span.attr_str("rpc.method"), Some(method), "{what}");
    assert_eq!(
        span.attr_str("rpc.response.status_code"),
        Some(code),
        "{what}"
    );
    assert_eq!(
        span.attr_str("network.protocol.version"),
        Some("2"),
        "{what}"
    );
    assert_eq!(
        span.attr_i64("server.port"),
        Some(i64::from(port)),
        "{what}"
    );
    assert_eq!(
        span.status(),
        Some(if error { "error" } else { "unset" }),
        "{what}"
    );
    if error {
        assert_eq!(span.attr_str("error.type"), Some(code), "{what}");
    }
    assert_eq!(span.pid(), Some(pid), "{what}");
    assert!(span.end_unix_nano() >= span.start_unix_nano(), "{what}");
}

/// (method, status code, client span is an error, server span is an error, calls).
type Call = (&'static str, &'static str, bool, bool, usize);
const HELLO: Call = ("demo.Greeter/SayHello", "OK", false, false, 1);
/// `many`: 8 concurrent SayHello calls on one channel.
const MANY: Call = ("demo.Greeter/SayHello", "OK", false, false, 9);
/// NOT_FOUND: an error for the client only.
const FAIL: Call = ("demo.Greeter/Fail", "NOT_FOUND", true, false, 1);
const STREAM: Call = ("demo.Greeter/Stream", "OK", false, false, 1);
/// UNKNOWN (a Python handler raised): an error on both sides.
const CRASH: Call = ("demo.Greeter/Crash", "UNKNOWN", true, true, 1);

/// Every server span's parent is a client span of the same call (same method), found by the
/// connection rule.
fn check_links(spans: &[Span]) {
    let (servers, clients) = split_by_kind(spans);
    for s in &servers {
        let parent = s
            .parent_span_id()
            .flatten()
            .unwrap_or_else(|| panic!("no parent: {s:?}\n{}", list(spans)));
        let client = clients
            .iter()
            .find(|c| c.span_id() == Some(parent))
            .unwrap_or_else(|| panic!("parent {parent} is no client span:\n{}", list(spans)));
        assert_eq!(client.name(), s.name(), "{s:?}");
        assert_eq!(client.trace_id(), s.trace_id());
        assert_eq!(s.attr_str("ztrace.link"), Some("connection"), "{s:?}");
    }
}

#[test]
#[ignore = "needs root and eBPF; run by cargo xtask test"]
fn grpc_go_server_and_client() {
    let dir = TempDir::new("grpc-go");
    let binary = grpc::build_go(dir.path());
    let server = GrpcServer::go(&binary, None);
    let mut ztrace = Ztrace::start(&["--print=json"]);

    let (client, out) = grpc::go_client(&binary, server.port, &["hello", "fail", "stream", "many"]);
    assert!(out.contains("NotFound"), "{out}");
    let spans = ztrace.wait_for_n_spans(2 * 11, on_port(server.port), SPAN_TIMEOUT);
    for (method, code, client_error, server_error, n) in [MANY, FAIL, STREAM] {
        for s in calls(&spans, "server", method, n) {
            check(s, method, code, server_error, server.pid(), server.port);
        }
        for s in calls(&spans, "client", method, n) {
            check(s, method, code, client_error, client, server.port);
        }
    }
    check_links(&spans);
    let stats = ztrace.stop().stats.expect("stats line");
    assert_eq!(
        stats
            .get("exchanges_fields_unknown")
            .and_then(|v| v.as_u64()),
        Some(0),
        "{stats:?}"
    );
}

#[test]
#[ignore = "needs root and eBPF; run by cargo xtask test"]
fn grpcio_server_with_go_and_python_clients() {
    let dir = TempDir::new("grpc-go");
    let binary = grpc::build_go(dir.path());
    let server = GrpcServer::python(None);
    let mut ztrace = Ztrace::start(&["--print=json"]);

    // grpc-go client: both sides named right; the client's spans carry every status.
    let (go_client, _) = grpc::go_client(&binary, server.port, &["hello", "fail", "stream"]);
    let spans = ztrace.wait_for_n_spans(6, on_port(server.port), SPAN_TIMEOUT);
    for (method, code, client_error, _, n) in [HELLO, FAIL, STREAM] {
        for s in calls(&spans, "client", method, n) {
            check(s, method, code, client_error, go_client, server.port);
        }
        assert_eq!(
            calls(&spans, "server", method, n)[0].pid(),
            Some(server.pid())
        );
    }

    // grpcio client: every call is a span on each side; the server names each right; nothing
    // is ever named or given a status wrongly.
    let (py_client, out) =
        grpc::python_client(server.port, &["hello", "fail", "crash", "stream", "many"]);
    assert!(
        out.contains("NOT_FOUND") && out.contains("UNKNOWN"),
        "{out}"
    );
    let (port, pid) = (server.port, server.pid());
    ztrace.wait_for_n_spans(
        3 + 12,
        |s| on_port(port)(s) && s.is_server() && s.pid() == Some(pid),
        SPAN_TIMEOUT,
    );
    let spans: Vec<Span> = ztrace.spans().into_iter().filter(on_port(port)).collect();
    let go_ports: Vec<i64> = spans
        .iter()
        .filter(|s| s.pid() == Some(go_client))
        .filter_map(|s| s.attr_i64("network.local.port"))
        .collect();
    let served: Vec<Span> = spans
        .iter()
        .filter(|s| {
            s.is_server() && !go_ports.contains(&s.attr_i64("network.peer.port").unwrap_or(0))
        })
        .cloned()
        .collect();
    let py: Vec<Span> = spans
        .iter()
        .filter(|s| s.pid() == Some(py_client))
        .cloned()
        .collect();
    assert_eq!(served.len(), 12, "{}", list(&spans));
    for (method, code, client_error, server_error, n) in [MANY, FAIL, STREAM, CRASH] {
        for s in calls(&served, "server", method, n) {
            assert_eq!(s.attr_str("rpc.method"), Some(method), "{s:?}");
            if let Some(c) = s.attr_str("rpc.response.status_code") {
                assert_eq!(c, code, "{s:?}");
                assert_eq!(
                    s.status(),
                    Some(if server_error { "error" } else { "unset" }),
                    "{s:?}"
                );
            }
        }
        let _ = client_error;
    }
    // The client's first write (preface, settings, the first call) has more than 8 iovecs:
    // the tail calls copy them, so every call is a span, named, with its status.
    assert_eq!(py.len(), 12, "{}", list(&spans));
    for (method, code, client_error, _, n) in [MANY, FAIL, STREAM, CRASH] {
        for s in calls(&py, "client", method, n) {
            check(s, method, code, client_error, py_client, port);
        }
    }
}

#[test]
#[ignore = "needs root and eBPF; run by cargo xtask test"]
fn python_client_to_go_server() {
    let dir = TempDir::new("grpc-go");
    let binary = grpc::build_go(dir.path());
    let server = GrpcServer::go(&binary, None);
    let mut ztrace = Ztrace::start(&["--print=json"]);
    let (py_client, _) = grpc::python_client(server.port, &["hello", "fail", "stream"]);
    let port = server.port;
    let pid = server.pid();
    ztrace.wait_for_n_spans(
        3,
        |s| on_port(port)(s) && s.pid() == Some(pid),
        SPAN_TIMEOUT,
    );
    let spans: Vec<Span> = ztrace.spans().into_iter().filter(on_port(port)).collect();
    // The Go server reads and writes whole: its spans are exact.
    for (method, code, _, server_error, n) in [HELLO, FAIL, STREAM] {
        for s in calls(&spans, "server", method, n) {
            check(s, method, code, server_error, server.pid(), server.port);
        }
    }
    // The grpcio client: its first write (preface, settings, the first call) has more than 8
    // iovecs, which the tail calls copy: every call named, with its status.
    let clients: Vec<Span> = spans
        .iter()
        .filter(|s| s.pid() == Some(py_client))
        .cloned()
        .collect();
    assert_eq!(clients.len(), 3, "{}", list(&spans));
    for (method, code, client_error, _, n) in [HELLO, FAIL, STREAM] {
        for s in calls(&clients, "client", method, n) {
            check(s, method, code, client_error, py_client, port);
        }
    }
}

#[test]
#[ignore = "needs root and eBPF; run by cargo xtask test"]
fn a_channel_opened_before_ztrace_never_names_wrongly_and_new_methods_decode() {
    let dir = TempDir::new("grpc-go");
    let binary = grpc::build_go(dir.path());
    let server = GrpcServer::go(&binary, None);
    // A grpcio channel that made calls before the agent started: the HPACK tables of its
    // connection hold entries (SayHello's path, the content type) ztrace never sees.
    let mut channel = grpc::python_channel(server.port);
    let mut done = 0;
    let mut call = |channel: &mut ztrace_e2e::process::Proc, what: &str| {
        channel.send_line(what);
        done += 1;
        let n = done;
        let ok = ztrace_e2e::wait_until(std::time::Duration::from_secs(20), || {
            (channel
                .stdout_lines()
                .iter()
                .filter(|l| l.trim() == "done")
                .count()
                >= n)
                .then_some(())
        });
        assert!(ok.is_some(), "call {what}:\n{}", channel.describe());
    };
    call(&mut channel, "hello");
    call(&mut channel, "hello");
    let mut ztrace = Ztrace::start(&["--print=json"]);
    for _ in 0..3 {
        call(&mut channel, "hello");
    }
    // A method first called now: its path is a new entry, which decodes.
    call(&mut channel, "fresh");
    let (port, pid) = (server.port, server.pid());
    let fresh = ztrace.wait_for_spans(
        |s| s.pid() == Some(pid) && s.name() == Some("demo.Greeter/Fresh"),
        SPAN_TIMEOUT,
    );
    assert_eq!(fresh.len(), 1);
    // The connection is recognized by a header block whose first field is in the static table
    // (the first answer's `:status`): the calls after that one are spans.
    let spans: Vec<Span> = ztrace
        .spans()
        .into_iter()
        .filter(|s| s.server_port() == Some(port) && s.pid() == Some(pid))
        .collect();
    assert!(spans.len() >= 3, "{}", list(&spans));
    for s in &spans {
        let name = s.name().unwrap_or_default();
        // SayHello's path refers to an entry from before: the span says less, never another
        // method (`POST` without a route, or `grpc`).
        assert!(
            ["demo.Greeter/Fresh", "POST", "grpc"].contains(&name),
            "{s:?}"
        );
        assert_eq!(s.attr_str("network.protocol.version"), Some("2"), "{s:?}");
    }
    drop(channel);
    let stats = ztrace.stop().stats.expect("stats line");
    assert!(
        stats
            .get("exchanges_fields_unknown")
            .and_then(|v| v.as_u64())
            .unwrap_or(0)
            >= 3,
        "{stats:?}"
    );
}

/// UNKNOWN (a Node handler threw): an error on both sides.
const NODE_CRASH: Call = ("demo.Greeter/Crash", "UNKNOWN", true, true, 1);
/// A 200 ms deadline on a handler that takes 1.5 s: the client resets the stream with `CANCEL`
/// once the `grpc-timeout` ran out; DEADLINE_EXCEEDED, an error on both sides.
const NODE_DEADLINE: Call = ("demo.Greeter/Slow", "DEADLINE_EXCEEDED", true, true, 1);

#[test]
#[ignore = "needs root and eBPF; run by cargo xtask test"]
fn node_grpc_js_server_and_client() {
    let server = GrpcServer::node();
    // Only these programs: the loss counters below are theirs alone.
    let mut ztrace = Ztrace::start(&["--print=json", "--exe", "node", "--exe", "grpc_go"]);

    let (client, out) = grpc::node_client(
        server.port,
        &["hello", "fail", "crash", "stream", "many", "deadline"],
    );
    assert!(
        out.contains("NOT_FOUND")
            && out.contains("stream 3")
            && out.contains("deadline DEADLINE_EXCEEDED"),
        "{out}"
    );
    let spans = ztrace.wait_for_n_spans(2 * 13, on_port(server.port), SPAN_TIMEOUT);
    for (method, code, client_error, server_error, n) in
        [MANY, FAIL, STREAM, NODE_CRASH, NODE_DEADLINE]
    {
        for s in calls(&spans, "server", method, n) {
            check(s, method, code, server_error, server.pid(), server.port);
        }
        for s in calls(&spans, "client", method, n) {
            check(s, method, code, client_error, client, server.port);
        }
    }
    check_links(&spans);

    // A grpc-go client of the Node server, and the Node client of a grpc-go server.
    let dir = TempDir::new("grpc-go");
    let binary = grpc::build_go(dir.path());
    let (go_client, _) = grpc::go_client(&binary, server.port, &["hello", "fail"]);
    let go_server = GrpcServer::go(&binary, None);
    let (node_client, _) = grpc::node_client(go_server.port, &["hello", "fail"]);
    for (port, server_pid, client_pid) in [
        (server.port, server.pid(), go_client),
        (go_server.port, go_server.pid(), node_client),
    ] {
        // The client's spans, and the server's spans of that client's connection.
        let clients = ztrace.wait_for_n_spans(
            2,
            |s| on_port(port)(s) && s.pid() == Some(client_pid),
            SPAN_TIMEOUT,
        );
        let local_port = clients[0].attr_i64("network.local.port");
        let mut spans = ztrace.wait_for_n_spans(
            2,
            |s| {
                on_port(port)(s)
                    && s.pid() == Some(server_pid)
                    && s.attr_i64("network.peer.port") == local_port
            },
            SPAN_TIMEOUT,
        );
        spans.extend(clients);
        for (method, code, client_error, server_error, n) in [HELLO, FAIL] {
            for s in calls(&spans, "server", method, n) {
                check(s, method, code, server_error, server_pid, port);
            }
            for s in calls(&spans, "client", method, n) {
                check(s, method, code, client_error, client_pid, port);
            }
        }
        check_links(&spans);
    }
    let stats = ztrace.stop().stats.expect("stats line");
    for counter in ["exchanges_lost", "exchanges_fields_unknown"] {
        assert_eq!(
            stats.get(counter).and_then(|v| v.as_u64()),
            Some(0),
            "{counter}: {stats:?}"
        );
    }
}

/// The whole chain Python (grpcio client) → Go gRPC server A → Go gRPC server B → PostgreSQL
/// (lib/pq): `calls` SayHello calls at once, each one trace with this exact tree —
/// the Python client span, A's server span (`connection`), A's client span made by A's handler
/// (`goroutine`: grpc-go writes it from the connection's writer goroutine, credited to the
/// handler goroutine that created the stream), B's server span (`connection`), B's query
/// (`goroutine`: B's handler goroutine, started by the reader goroutine for that stream), and
/// PostgreSQL's server span for it (`connection`). A's client span carries the stack of the
/// handler that made the call.
fn chain(calls: &str, n: usize) {
    let dir = TempDir::new("grpc-chain");
    let binary = grpc::build_go(dir.path());
    let pg = ztrace_e2e::postgres::PgServer::start();
    let b = GrpcServer::go_to(&binary, &format!("pg:{}", pg.port));
    let a = GrpcServer::go(&binary, Some(b.port));
    let mut ztrace = Ztrace::start(&["--print=json"]);

    let (a_port, b_port, pg_port) = (a.port, b.port, pg.port);
    let ours = move |s: &Span| {
        on_port(a_port)(s)
            || on_port(b_port)(s)
            || (s.server_port() == Some(pg_port)
                && s.attr_str("db.postgresql.application_name") == Some("grpc_go")
                && s.attr_str("db.operation.name") == Some("SELECT"))
    };
    // A first call, not checked: the agent reads the binaries' symbols for the first stacks,
    // which may take longer than a span waits for its stack (1 s) on a loaded machine.
    let (_, out) = grpc::python_client(a.port, &["hello"]);
    assert!(out.contains("hello from postgres"), "{out}");
    ztrace.wait_for_n_spans(6, ours, SPAN_TIMEOUT);
    let (py, out) = grpc::python_client(a.port, &[calls]);
    assert_eq!(out.matches("hello from postgres").count(), n, "{out}");
    let spans = ztrace.wait_for_n_spans(6 * (n + 1), ours, SPAN_TIMEOUT);
    let stats = ztrace.stop().stats.expect("stats line");
    let counters: Vec<String> = [
        "go_stream_owners",
        "go_stream_owners_late",
        "kernel_go_stream_events",
        "kernel_go_spawn_events",
        "link_window_peak",
        "stacks_attached",
        "stacks_timed_out",
        "kernel_stack_budget_skipped",
    ]
    .iter()
    .map(|c| format!("{c}={:?}", stats.get(*c)))
    .collect();
    let all = format!("{}\n{}", counters.join(" "), list(&spans));
    let one = |kind: &str, pid: u32, port: u16, parent: Option<&str>| -> &Span {
        let found: Vec<&Span> = spans
            .iter()
            .filter(|s| {
                s.kind() == Some(kind)
                    && s.pid() == Some(pid)
                    && s.server_port() == Some(port)
                    && s.parent_span_id().flatten() == parent
            })
            .collect();
        assert_eq!(
            found.len(),
            1,
            "one {kind} span of pid {pid} on port {port} with parent {parent:?}:\n{all}"
        );
        found[0]
    };
    let roots: Vec<&Span> = spans
        .iter()
        .filter(|s| s.pid() == Some(py) && s.kind() == Some("client"))
        .collect();
    assert_eq!(roots.len(), n, "{all}");
    let method = "demo.Greeter/SayHello";
    let mut traces = std::collections::HashSet::new();
    for root in roots {
        check(root, method, "OK", false, py, a.port);
        assert_eq!(root.parent_span_id(), Some(None), "{root:?}");
        let a_in = one("server", a.pid(), a.port, root.span_id());
        let a_out = one("client", a.pid(), b.port, a_in.span_id());
        let b_in = one("server", b.pid(), b.port, a_out.span_id());
        let query = one("client", b.pid(), pg.port, b_in.span_id());
        let backend = spans
            .iter()
            .find(|s| s.kind() == Some("server") && s.parent_span_id().flatten() == query.span_id())
            .unwrap_or_else(|| panic!("no PostgreSQL span under {query:?}:\n{all}"));
        for (s, link) in [
            (a_in, "connection"),
            (a_out, "goroutine"),
            (b_in, "connection"),
            (query, "goroutine"),
            (backend, "connection"),
        ] {
            assert_eq!(s.trace_id(), root.trace_id(), "{s:?}\n{all}");
            assert_eq!(s.attr_str("ztrace.link"), Some(link), "{s:?}\n{all}");
        }
        check(a_in, method, "OK", false, a.pid(), a.port);
        check(a_out, method, "OK", false, a.pid(), b.port);
        // Its stack is the handler's (taken at NewStream on the handler goroutine), not the
        // stack of the writer goroutine that wrote its frames.
        let stack = a_out.attr_str("code.stacktrace").unwrap_or_default();
        assert!(
            stack.contains("main.serve.func1") && !stack.contains("loopyWriter"),
            "{stack}\n{a_out:?}\n{all}"
        );
        check(b_in, method, "OK", false, b.pid(), b.port);
        assert_eq!(backend.server_port(), Some(pg.port), "{backend:?}");
        traces.insert(root.trace_id().map(str::to_owned));
    }
    assert_eq!(traces.len(), n, "each call is its own trace:\n{all}");
    assert!(
        stats.get("go_stream_owners").and_then(|v| v.as_u64()) >= Some(n as u64 + 1),
        "{stats:?}"
    );
}

#[test]
#[ignore = "needs root and eBPF; run by cargo xtask test"]
fn python_to_go_to_go_to_postgres_is_one_trace() {
    chain("hello", 1);
}

#[test]
#[ignore = "needs root and eBPF; run by cargo xtask test"]
fn eight_concurrent_calls_through_the_chain_each_get_their_own_exact_tree() {
    chain("many", 8);
}
