//! Stacks end to end: client programs built here (C without frame pointers, Rust release with an
//! inlined function, Go with net/http and lib/pq, a binary whose DWARF was split into a
//! build-id `.debug` file) make requests from functions with known names and lines; each client
//! span must name that function, file and line as its innermost application frame, and its
//! `code.stacktrace` must reach `main`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use ztrace_e2e::postgres::PgServer;
use ztrace_e2e::servers::Server;
use ztrace_e2e::ztrace::SPAN_TIMEOUT;
use ztrace_e2e::{fixture, Span, TempDir, Ztrace};

/// The 1-based line of `file` holding `marker`.
fn line_of(file: &Path, marker: &str) -> i64 {
    let text =
        std::fs::read_to_string(file).unwrap_or_else(|e| panic!("read {}: {e}", file.display()));
    let n = text
        .lines()
        .position(|l| l.contains(marker))
        .unwrap_or_else(|| panic!("{marker} not in {}", file.display()));
    n as i64 + 1
}

fn run_ok(what: &str, cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a client to its end and returns its pid.
fn run_client(what: &str, cmd: &mut Command) -> u32 {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    let pid = child.id();
    let out = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    pid
}

/// What the innermost application frame of a span must be.
struct Expected<'a> {
    function: &'a str,
    file: &'a Path,
    line: i64,
}

/// The span's stack attributes match `want`, and its stack reaches `main`.
fn check_stack(span: &Span, want: &Expected<'_>, main: &str) {
    assert_eq!(
        span.attr_str("code.function.name"),
        Some(want.function),
        "function of {span:?}"
    );
    assert_eq!(
        span.attr_str("code.file.path")
            .map(PathBuf::from)
            .as_deref(),
        Some(want.file),
        "file of {span:?}"
    );
    assert_eq!(
        span.attr_i64("code.line.number"),
        Some(want.line),
        "line of {span:?}"
    );
    let stack = span
        .attr_str("code.stacktrace")
        .unwrap_or_else(|| panic!("no code.stacktrace: {span:?}"));
    assert!(
        stack.lines().any(|l| l.starts_with(&format!("{main} ("))),
        "the stack does not reach {main}:\n{stack}"
    );
    let first_app = stack
        .lines()
        .position(|l| l.starts_with(&format!("{} (", want.function)));
    assert!(
        first_app.is_some(),
        "{} is not in the stack:\n{stack}",
        want.function
    );
    assert_eq!(
        span.attr_str("ztrace.stack"),
        None,
        "a native program is not marked native-only: {span:?}"
    );
}

fn client_spans(ztrace: &mut Ztrace, pid: u32, port: u16, n: usize) -> Vec<Span> {
    ztrace.wait_for_n_spans(
        n,
        |s| s.is_client() && s.pid() == Some(pid) && s.server_port() == Some(port),
        SPAN_TIMEOUT,
    )
}

/// Compiles the C fixture without frame pointers into `dir`.
fn build_c_client(dir: &Path) -> (PathBuf, PathBuf) {
    ztrace_e2e::clients::build_stack_client_c(dir)
}

#[test]
#[ignore = "needs root and eBPF; run by cargo xtask test"]
fn c_without_frame_pointers_is_unwound_with_eh_frame() {
    let dir = TempDir::new("stacks-c");
    let (binary, source) = build_c_client(dir.path());
    let server = Server::python_http("127.0.0.1");
    let mut ztrace = Ztrace::start(&["--print=json", "--exe", "stack_client", "--exe", "python3"]);
    let pid = run_client(
        "stack_client",
        Command::new(&binary).arg(server.port.to_string()).arg("3"),
    );
    let spans = client_spans(&mut ztrace, pid, server.port, 3);
    let want = Expected {
        function: "fetch_orders",
        file: &source,
        line: line_of(&source, "/* STACK-LINE */"),
    };
    for span in &spans {
        check_stack(span, &want, "main");
    }
    let stopped = ztrace.stop();
    let stats = stopped.stats.expect("stats line");
    assert!(
        stats
            .get("kernel_stack_events")
            .and_then(|v| v.as_u64())
            .unwrap_or(0)
            >= 3,
        "{stats:?}"
    );
}

#[test]
#[ignore = "needs root and eBPF; run by cargo xtask test"]
fn split_debug_info_is_found_by_build_id() {
    let dir = TempDir::new("stacks-split");
    let (binary, source) = build_c_client(dir.path());
    let notes = run_ok("readelf -n", Command::new("readelf").arg("-n").arg(&binary));
    let build_id = notes
        .lines()
        .find_map(|l| l.trim().strip_prefix("Build ID: "))
        .unwrap_or_else(|| panic!("no build id in {}:\n{notes}", binary.display()))
        .trim()
        .to_owned();
    let debug_dir = dir.join("debug");
    let id_dir = debug_dir.join(".build-id").join(&build_id[..2]);
    std::fs::create_dir_all(&id_dir).expect("mkdir");
    let debug_file = id_dir.join(format!("{}.debug", &build_id[2..]));
    run_ok(
        "objcopy",
        Command::new("objcopy")
            .arg("--only-keep-debug")
            .arg(&binary)
            .arg(&debug_file),
    );
    run_ok(
        "strip",
        Command::new("strip").arg("--strip-all").arg(&binary),
    );
    let sections = run_ok("readelf -S", Command::new("readelf").arg("-S").arg(&binary));
    assert!(
        !sections.contains(".debug_info") && !sections.contains(".symtab"),
        "not stripped:\n{sections}"
    );

    let server = Server::python_http("127.0.0.1");
    let debug_arg = format!("--debug-dir={}", debug_dir.display());
    let mut ztrace = Ztrace::start(&[
        "--print=json",
        "--exe",
        "stack_client",
        "--exe",
        "python3",
        &debug_arg,
    ]);
    let pid = run_client(
        "stripped stack_client",
        Command::new(&binary).arg(server.port.to_string()),
    );
    let spans = client_spans(&mut ztrace, pid, server.port, 1);
    let want = Expected {
        function: "fetch_orders",
        file: &source,
        line: line_of(&source, "/* STACK-LINE */"),
    };
    check_stack(&spans[0], &want, "main");
    ztrace.stop();
}

#[test]
#[ignore = "needs root and eBPF; run by cargo xtask test"]
fn rust_release_without_frame_pointers_with_an_inlined_frame() {
    let dir = TempDir::new("stacks-rust");
    let source = fixture("stack_client.rs")
        .canonicalize()
        .expect("fixture path");
    let binary = dir.join("stack_client_rs");
    run_ok(
        "rustc",
        Command::new("rustc")
            .args([
                "--edition",
                "2021",
                "-C",
                "opt-level=3",
                "-C",
                "debuginfo=2",
                "-C",
                "force-frame-pointers=no",
            ])
            .args(["--crate-name", "stack_client", "-o"])
            .arg(&binary)
            .arg(&source),
    );
    let server = Server::python_http("127.0.0.1");
    let mut ztrace = Ztrace::start(&[
        "--print=json",
        "--exe",
        "stack_client_rs",
        "--exe",
        "python3",
    ]);
    let pid = run_client(
        "stack_client_rs",
        Command::new(&binary).arg(server.port.to_string()).arg("2"),
    );
    let spans = client_spans(&mut ztrace, pid, server.port, 2);
    // send_request is inlined into fetch_orders: it is a frame of its own, the innermost
    // application frame, and fetch_orders (the frame it is inlined into) follows it.
    let want = Expected {
        function: "stack_client::send_request",
        file: &source,
        line: line_of(&source, "// STACK-LINE"),
    };
    for span in &spans {
        check_stack(span, &want, "stack_client::main");
        let stack = span.attr_str("code.stacktrace").expect("stack");
        let lines: Vec<&str> = stack.lines().collect();
        let at = lines
            .iter()
            .position(|l| l.starts_with("stack_client::send_request ("))
            .expect("inlined frame");
        assert!(
            lines
                .get(at + 1)
                .is_some_and(|l| l.starts_with("stack_client::fetch_orders (")),
            "the inlined frame is not followed by its caller:\n{stack}"
        );
        assert!(!stack.contains("_ZN"), "names are demangled:\n{stack}");
    }
    ztrace.stop();
}

/// Builds `tests/fixtures/stack_go` (GOPATH mode, Debian's lib/pq) into `dir`, with `ldflags`.
fn build_go_client(dir: &Path, name: &str, ldflags: &str) -> (PathBuf, PathBuf) {
    let source = fixture("stack_go/main.go")
        .canonicalize()
        .expect("fixture path");
    let out = dir.join(name);
    run_ok(
        "go build stack_go (apt-get install golang-go golang-github-lib-pq-dev)",
        Command::new("go")
            .args(["build", "-ldflags", ldflags, "-o"])
            .arg(&out)
            .arg(&source)
            .envs([
                ("GO111MODULE", "off"),
                ("GOPATH", "/usr/share/gocode"),
                ("GOPROXY", "off"),
                ("CGO_ENABLED", "0"),
            ]),
    );
    (out, source)
}

/// Runs the Go client against an HTTP server and PostgreSQL; its HTTP and SQL client spans.
fn go_spans(binary: &Path, exe: &str, extra: &[&str]) -> (Span, Span, Ztrace) {
    let server = Server::python_http("127.0.0.1");
    let pg = PgServer::start();
    let mut args = vec!["--print=json", "--exe", exe, "--exe", "python3"];
    args.extend_from_slice(extra);
    let mut ztrace = Ztrace::start(&args);
    let pid = run_client(
        exe,
        Command::new(binary)
            .arg(server.port.to_string())
            .arg(pg.port.to_string()),
    );
    let http = client_spans(&mut ztrace, pid, server.port, 1).remove(0);
    let sql = ztrace
        .wait_for_n_spans(
            1,
            |s| {
                s.is_client()
                    && s.pid() == Some(pid)
                    && s.server_port() == Some(pg.port)
                    && s.attr_str("db.query.text")
                        .is_some_and(|q| q.starts_with("SELECT $1::int + "))
            },
            SPAN_TIMEOUT,
        )
        .remove(0);
    (http, sql, ztrace)
}

#[test]
#[ignore = "needs root and eBPF; run by cargo xtask test"]
fn go_net_http_and_lib_pq_name_the_issuing_function() {
    let dir = TempDir::new("stacks-go");
    let (binary, source) = build_go_client(dir.path(), "stack_go", "");
    let (http, sql, ztrace) = go_spans(&binary, "stack_go", &[]);
    // net/http writes the request on the connection's writeLoop goroutine; the span carries the
    // stack of the goroutine that called http.Get, saved at its roundTrip.
    let want = Expected {
        function: "main.fetchOrders",
        file: &source,
        line: line_of(&source, "// HTTP-LINE"),
    };
    check_stack(&http, &want, "main.main");
    let want = Expected {
        function: "main.queryUser",
        file: &source,
        line: line_of(&source, "// SQL-LINE"),
    };
    check_stack(&sql, &want, "main.main");
    let stats = ztrace.stop().stats.expect("stats line");
    assert!(
        stats
            .get("kernel_stack_from_go_owner")
            .and_then(|v| v.as_u64())
            .unwrap_or(0)
            >= 1,
        "{stats:?}"
    );
}

#[test]
#[ignore = "needs root and eBPF; run by cargo xtask test"]
fn stripped_go_is_symbolized_from_gopclntab() {
    let dir = TempDir::new("stacks-go-stripped");
    let (binary, source) = build_go_client(dir.path(), "stack_go_strip", "-s -w");
    let sections = run_ok("readelf -S", Command::new("readelf").arg("-S").arg(&binary));
    assert!(
        !sections.contains(".debug_info") && !sections.contains(".symtab"),
        "not stripped:\n{sections}"
    );
    assert!(
        sections.contains(".gopclntab"),
        "no .gopclntab:\n{sections}"
    );
    let (http, sql, ztrace) = go_spans(&binary, "stack_go_strip", &[]);
    // net/http.Get is inlined into fetchOrders: the inline tree gives it its own frame.
    let want = Expected {
        function: "main.fetchOrders",
        file: &source,
        line: line_of(&source, "// HTTP-LINE"),
    };
    check_stack(&http, &want, "main.main");
    let stack = http.attr_str("code.stacktrace").expect("stack");
    assert!(
        stack.lines().any(|l| l.starts_with("net/http.Get (")),
        "the inlined net/http.Get is a frame:\n{stack}"
    );
    let want = Expected {
        function: "main.queryUser",
        file: &source,
        line: line_of(&source, "// SQL-LINE"),
    };
    check_stack(&sql, &want, "main.main");
    ztrace.stop();
}

/// A Python client's native stack shows only the interpreter's frames: the kernel stops taking
/// its stacks once the agent has seen it is Python (from its first connection on), so its spans
/// after the first carry none and cost no unwinding.
#[test]
#[ignore = "needs root and eBPF; run by cargo xtask test"]
fn an_interpreters_requests_take_no_stacks() {
    let server = Server::python_http("127.0.0.1");
    let python = "/usr/bin/python3";
    let mut ztrace = Ztrace::start(&["--print=json", "--stacks=on", "--exe", "python3"]);
    let url = format!("http://127.0.0.1:{}/", server.port);
    // One connection per request, a little apart: the agent sees the first before the second.
    let script = "import sys, time, urllib.request\nfor u in sys.argv[1:]:\n    urllib.request.urlopen(u).read()\n    time.sleep(0.5)\n";
    let pid = run_client(
        "python urllib",
        Command::new(python)
            .args(["-c", script])
            .args([&url, &url, &url, &url]),
    );
    let mut spans = client_spans(&mut ztrace, pid, server.port, 4);
    spans.sort_by_key(|s| s.start_unix_nano());
    for span in &spans[1..] {
        assert_eq!(
            span.attr_str("code.stacktrace"),
            None,
            "a Python client span got a stack: {span:?}"
        );
        assert_eq!(
            span.attr_str("code.function.name"),
            None,
            "a Python client span got a frame: {span:?}"
        );
    }
    let stopped = ztrace.stop();
    let stats = stopped.stats.expect("the stats line");
    let stacks = stats
        .get("kernel_stack_events")
        .and_then(|v| v.as_u64())
        .expect("kernel_stack_events");
    assert!(
        stacks <= 1,
        "the kernel took {stacks} stacks of a Python client (at most its first request's)"
    );
}
