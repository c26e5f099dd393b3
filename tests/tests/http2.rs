//! HTTP/2 that is not gRPC, end to end: nginx with `http2` over TLS (plaintext from the OpenSSL
//! probes) and over h2c, served to `curl --http2` and to a Go `net/http` client speaking HTTP/2
//! through Go's `crypto/tls` probes; Go's `x/net/http2/h2c` server upgrading the HTTP/1.1
//! request (`Upgrade: h2c`) of `curl --http2` and of `nghttp -u`. Each request is a SERVER span in
//! nginx and a CLIENT span in the client, with the HTTP/1 attributes and
//! `network.protocol.version` `2`.

use std::process::Command;

use ztrace_e2e::clients;
use ztrace_e2e::grpc;
use ztrace_e2e::nginx::{Config, Nginx};
use ztrace_e2e::span::{list, split_by_kind};
use ztrace_e2e::tls::{self, Certs};
use ztrace_e2e::ztrace::SPAN_TIMEOUT;
use ztrace_e2e::{Span, TempDir, Ztrace};

fn nginx_h2(certs: &Certs) -> Nginx {
    let config = Config {
        http: true,
        tls: Some((certs, Some("TLSv1.2 TLSv1.3"))),
        load: false,
        http2: true,
    };
    Nginx::start(&[("hello", "hello over h2\n")], &config)
}

fn on_port(port: u16) -> impl Fn(&Span) -> bool {
    move |s| s.server_port() == Some(port)
}

/// One request's span: name, method, path, status, version 2, scheme, pid.
fn check(span: &Span, name: &str, path: &str, status: i64, scheme: &str, pid: Option<u32>) {
    let what = format!("{span:?}");
    assert_eq!(span.name(), Some(name), "{what}");
    assert_eq!(span.attr_str("http.request.method"), Some("GET"), "{what}");
    assert_eq!(span.attr_str("url.path"), Some(path), "{what}");
    assert_eq!(
        span.attr_i64("http.response.status_code"),
        Some(status),
        "{what}"
    );
    assert_eq!(
        span.attr_str("network.protocol.version"),
        Some("2"),
        "{what}"
    );
    assert_eq!(span.attr_str("url.scheme"), Some(scheme), "{what}");
    assert!(span.attr_str("rpc.system.name").is_none(), "{what}");
    if let Some(pid) = pid {
        assert_eq!(span.pid(), Some(pid), "{what}");
    }
}

#[test]
#[ignore = "needs root and eBPF; run by cargo xtask test"]
fn nginx_h2_over_tls_and_h2c_with_curl() {
    let certs = Certs::make();
    let nginx = nginx_h2(&certs);
    let (tls_port, port) = (nginx.tls_port.expect("tls port"), nginx.port.expect("port"));
    let mut ztrace = Ztrace::start(&["--print=json"]);

    let ca = certs.cert.display().to_string();
    let urls = [
        format!("https://127.0.0.1:{tls_port}/items/42"),
        format!("https://127.0.0.1:{tls_port}/hello"),
    ];
    let run = clients::curl_with(&urls, &["--http2", "--cacert", &ca]);
    assert_eq!(
        run.transfers.iter().map(|t| t.0).collect::<Vec<_>>(),
        [200, 200]
    );
    let spans = ztrace.wait_for_n_spans(4, on_port(tls_port), SPAN_TIMEOUT);
    let (servers, clients) = split_by_kind(&spans);
    assert_eq!((servers.len(), clients.len()), (2, 2), "{}", list(&spans));
    for side in [&servers, &clients] {
        let items = side
            .iter()
            .find(|s| s.url_path() == Some("/items/42"))
            .expect("/items/42");
        let hello = side
            .iter()
            .find(|s| s.url_path() == Some("/hello"))
            .expect("/hello");
        let pid = (side == &clients).then_some(run.pid);
        check(items, "GET /items/{id}", "/items/42", 200, "https", pid);
        check(hello, "GET /hello", "/hello", 200, "https", pid);
    }

    // A traceparent in the HTTP/2 request headers is honoured.
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let header = format!("traceparent: {tp}");
    let url = format!("https://127.0.0.1:{tls_port}/items/9");
    clients::curl_with(&[url], &["--http2", "--cacert", &ca, "-H", &header]);
    let spans = ztrace.wait_for_spans(
        |s| on_port(tls_port)(s) && s.is_server() && s.url_path() == Some("/items/9"),
        SPAN_TIMEOUT,
    );
    assert_eq!(
        spans[0].trace_id(),
        Some("4bf92f3577b34da6a3ce929d0e0e4736"),
        "{:?}",
        spans[0]
    );
    assert_eq!(
        spans[0].parent_span_id(),
        Some(Some("00f067aa0ba902b7")),
        "{:?}",
        spans[0]
    );
    assert_eq!(
        spans[0].attr_str("ztrace.link"),
        Some("header"),
        "{:?}",
        spans[0]
    );

    let run = clients::curl_with(
        &[format!("http://127.0.0.1:{port}/error")],
        &["--http2-prior-knowledge"],
    );
    assert_eq!(run.transfers[0].0, 500);
    let spans = ztrace.wait_for_n_spans(2, on_port(port), SPAN_TIMEOUT);
    for s in &spans {
        check(s, "GET /error", "/error", 500, "http", None);
        assert_eq!(s.status(), Some("error"), "{s:?}");
    }
    drop(nginx);
}

#[test]
#[ignore = "needs root and eBPF; run by cargo xtask test"]
fn go_net_http_client_speaks_h2_over_crypto_tls() {
    let certs = Certs::make();
    let nginx = nginx_h2(&certs);
    let tls_port = nginx.tls_port.expect("tls port");
    let dir = TempDir::new("go-h2");
    let binary = tls::build_go_https(dir.path(), "go");
    // A process of the binary runs before the agent starts, so that its crypto/tls probes are
    // in place before the client's first write (the preface).
    let _server = tls::TlsServer::go(&binary, &certs);
    let mut ztrace = Ztrace::start(&["--print=json"]);

    let urls = [
        format!("https://localhost:{tls_port}/items/7"),
        format!("https://localhost:{tls_port}/hello"),
    ];
    let mut cmd = Command::new(&binary);
    cmd.arg("get2").arg(&certs.cert).args(&urls);
    let (pid, stdout) = tls::run_client("go https h2 client", &mut cmd);
    assert_eq!(
        stdout
            .lines()
            .filter(|l| l.trim() == "200 HTTP/2.0")
            .count(),
        2,
        "{stdout}"
    );
    let spans = ztrace.wait_for_n_spans(4, on_port(tls_port), SPAN_TIMEOUT);
    let (_, clients) = split_by_kind(&spans);
    let go: Vec<&Span> = clients.iter().filter(|s| s.pid() == Some(pid)).collect();
    assert_eq!(go.len(), 2, "{}", list(&spans));
    let items = go
        .iter()
        .find(|s| s.url_path() == Some("/items/7"))
        .expect("/items/7");
    check(
        items,
        "GET /items/{id}",
        "/items/7",
        200,
        "https",
        Some(pid),
    );
    assert_eq!(
        items.attr_str("server.address"),
        Some("localhost"),
        "{items:?}"
    );
    drop(nginx);
}

#[test]
#[ignore = "needs root and eBPF; run by cargo xtask test"]
fn an_http1_request_upgraded_to_h2c_and_the_streams_after_it() {
    // curl --http2 on http:// sends the first request as HTTP/1.1 with `Upgrade: h2c`; the
    // server answers 101 and then in HTTP/2 on stream 1; the next requests are streams 3, 5.
    upgraded_to_h2c_by("curl", |urls| {
        let run = clients::curl_with(urls, &["--http2"]);
        assert_eq!(
            run.transfers.iter().map(|t| t.0).collect::<Vec<_>>(),
            [200, 404, 200]
        );
        run.pid
    });
}

/// nghttp (nghttp2-client) `-u` upgrades too, then sends PRIORITY frames for idle streams 3 to 11
/// (its dependency tree, no request in them) and the next requests on streams 13 and 15.
#[test]
#[ignore = "needs root and eBPF; run by cargo xtask test"]
fn nghttp_upgrades_to_h2c_and_its_priority_tree_opens_no_stream() {
    upgraded_to_h2c_by("nghttp", |urls| {
        let mut args = vec!["-u"];
        args.extend(urls.iter().map(String::as_str));
        run_to_end("nghttp", &args).0
    });
}

/// Go's h2c server, traced with the client `exe` that `run` starts on three URLs (the first
/// one upgraded): its pid. Three spans a side, named, with statuses, parents by connection,
/// nothing lost.
fn upgraded_to_h2c_by(exe: &str, run: impl FnOnce(&[String]) -> u32) {
    let dir = TempDir::new("h2c");
    let binary = grpc::build_h2c(dir.path());
    let server = grpc::h2c_server(&binary);
    // Only these two programs: the loss counters below are theirs alone.
    let mut ztrace = Ztrace::start(&["--print=json", "--exe", "h2c_go", "--exe", exe]);

    let base = format!("http://127.0.0.1:{}", server.port);
    let urls = [
        format!("{base}/items/42"),
        format!("{base}/missing"),
        format!("{base}/hello"),
    ];
    let client_pid = run(&urls);
    let spans = ztrace.wait_for_n_spans(6, on_port(server.port), SPAN_TIMEOUT);
    let (servers, clients) = split_by_kind(&spans);
    assert_eq!((servers.len(), clients.len()), (3, 3), "{}", list(&spans));
    for (side, pid) in [(&servers, server.pid()), (&clients, client_pid)] {
        let find = |path: &str| {
            side.iter()
                .find(|s| s.url_path() == Some(path))
                .unwrap_or_else(|| panic!("{path}:\n{}", list(&spans)))
        };
        check(
            find("/items/42"),
            "GET /items/{id}",
            "/items/42",
            200,
            "http",
            Some(pid),
        );
        check(
            find("/missing"),
            "GET /missing",
            "/missing",
            404,
            "http",
            Some(pid),
        );
        check(
            find("/hello"),
            "GET /hello",
            "/hello",
            200,
            "http",
            Some(pid),
        );
    }
    // Each server span is the child of the client span of its own request, the upgraded one
    // (paired as HTTP/1 requests are) and the streams after it (paired by stream id).
    for s in &servers {
        let parent = s.parent_span_id().flatten().expect("a parent");
        let client = clients
            .iter()
            .find(|c| c.span_id() == Some(parent))
            .unwrap_or_else(|| panic!("parent of {s:?}:\n{}", list(&spans)));
        assert_eq!(client.url_path(), s.url_path(), "{s:?}");
        assert_eq!(s.attr_str("ztrace.link"), Some("connection"), "{s:?}");
    }
    let stats = ztrace.stop().stats.expect("stats line");
    for counter in [
        "exchanges_lost",
        "exchanges_fields_unknown",
        "exchanges_unanswered",
    ] {
        assert_eq!(
            stats.get(counter).and_then(|v| v.as_u64()),
            Some(0),
            "{counter}: {stats:?}"
        );
    }
}

/// Runs h2load (nghttp2-client) to the end: its pid and stdout; panics when it fails.
fn h2load(args: &[&str]) -> (u32, String) {
    run_to_end("h2load", args)
}

/// Runs `program` with `args` to the end: its pid and stdout; panics when it fails.
fn run_to_end(program: &str, args: &[&str]) -> (u32, String) {
    let mut cmd = Command::new(program);
    cmd.args(args);
    let mut proc = ztrace_e2e::process::Proc::spawn(program, &mut cmd);
    let status = proc.wait_exit(std::time::Duration::from_secs(60));
    assert!(
        status.is_some_and(|s| s.success()),
        "{program} failed:\n{}",
        proc.describe()
    );
    (proc.pid(), proc.stdout())
}

#[test]
#[ignore = "needs root and eBPF; run by cargo xtask test"]
fn h2load_against_nginx_loses_no_span() {
    let certs = Certs::make();
    let nginx = nginx_h2(&certs);
    let (tls_port, port) = (nginx.tls_port.expect("tls port"), nginx.port.expect("port"));
    // The counts are the test: the agent's loss counters would count other nginx on the host.
    let mut ztrace = Ztrace::start(&["--print=json", "--exe", "nginx", "--exe", "h2load"]);
    // 400 requests on 4 connections, 10 streams at a time on each: h2c, then h2 over TLS.
    for (port, scheme) in [(port, "http"), (tls_port, "https")] {
        let url = format!("{scheme}://127.0.0.1:{port}/hello");
        let (pid, out) = h2load(&["-n", "400", "-c", "4", "-m", "10", &url]);
        assert!(out.contains("400 succeeded, 0 failed, 0 errored"), "{out}");
        let spans = ztrace.wait_for_n_spans(800, on_port(port), SPAN_TIMEOUT);
        let (servers, clients) = split_by_kind(&spans);
        assert_eq!(
            (servers.len(), clients.len()),
            (400, 400),
            "{scheme}: every request a span on each side"
        );
        for s in servers.iter().chain(&clients) {
            assert_eq!(s.name(), Some("GET /hello"), "{s:?}");
            assert_eq!(s.attr_i64("http.response.status_code"), Some(200), "{s:?}");
            assert_eq!(s.attr_str("network.protocol.version"), Some("2"), "{s:?}");
        }
        assert!(clients.iter().all(|c| c.pid() == Some(pid)));
        // Each server stream is the child of the client stream of the same id.
        let ids: std::collections::HashSet<&str> =
            clients.iter().filter_map(|c| c.span_id()).collect();
        let linked = servers
            .iter()
            .filter(|s| {
                s.parent_span_id()
                    .flatten()
                    .is_some_and(|p| ids.contains(p))
            })
            .count();
        assert_eq!(
            linked, 400,
            "{scheme}: server spans whose parent is a client span"
        );
    }
    drop(nginx);
}

/// Go's HTTP/2 server (`x/net/http2` behind `h2c.NewHandler`, whose serve goroutine starts a
/// frame reader and then a goroutine per stream the reader read): the request each handler
/// makes (net/http's client to nginx) is the child of the handler's stream, with 8 streams at
/// once on one connection; every tree exact.
#[test]
#[ignore = "needs root and eBPF; run by cargo xtask test"]
fn a_go_http2_handlers_requests_are_children_of_its_stream() {
    let dir = TempDir::new("h2c-links");
    let binary = grpc::build_h2c(dir.path());
    let server = grpc::h2c_server(&binary);
    let down = ztrace_e2e::servers::Server::nginx();
    let mut ztrace = Ztrace::start(&["--print=json"]);
    let url = format!(
        "http://127.0.0.1:{}/forward?to={}",
        server.port,
        down.url("/hello")
    );
    let (h2load_pid, out) = h2load(&["-n", "16", "-c", "1", "-m", "8", &url]);
    assert!(out.contains("16 succeeded, 0 failed, 0 errored"), "{out}");
    let (port, down_port) = (server.port, down.port);
    let spans = ztrace.wait_for_n_spans(
        64,
        |s| {
            s.server_port() == Some(port)
                || (s.server_port() == Some(down_port) && s.url_path() == Some("/hello"))
        },
        SPAN_TIMEOUT,
    );
    let all = list(&spans);
    let children = |parent: Option<&str>, kind: &str| -> Vec<&Span> {
        spans
            .iter()
            .filter(|s| s.kind() == Some(kind) && s.parent_span_id().flatten() == parent)
            .collect()
    };
    let streams: Vec<&Span> = spans
        .iter()
        .filter(|s| s.pid() == Some(server.pid()) && s.kind() == Some("server"))
        .collect();
    assert_eq!(streams.len(), 16, "{all}");
    let mut traces = std::collections::HashSet::new();
    for stream in streams {
        assert_eq!(stream.url_path(), Some("/forward"), "{stream:?}");
        let parent = stream.parent_span_id().flatten();
        let client = spans
            .iter()
            .find(|c| c.span_id() == parent)
            .unwrap_or_else(|| panic!("no parent for {stream:?}:\n{all}"));
        assert_eq!(client.pid(), Some(h2load_pid), "{client:?}");
        let calls = children(stream.span_id(), "client");
        assert_eq!(calls.len(), 1, "one request under {stream:?}:\n{all}");
        let call = calls[0];
        assert_eq!(call.pid(), Some(server.pid()), "{call:?}");
        assert_eq!(call.server_port(), Some(down.port), "{call:?}");
        assert_eq!(call.attr_str("ztrace.link"), Some("goroutine"), "{call:?}");
        let served = children(call.span_id(), "server");
        assert_eq!(served.len(), 1, "nginx's span under {call:?}:\n{all}");
        for s in [stream, call, served[0]] {
            assert_eq!(s.trace_id(), client.trace_id(), "{s:?}\n{all}");
        }
        traces.insert(client.trace_id().map(str::to_owned));
    }
    assert_eq!(traces.len(), 16, "each request its own trace:\n{all}");
}
