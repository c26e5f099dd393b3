//! HTTP/1.x end to end: real servers (Python http.server, nginx, the fixture server) and real
//! clients (curl, urllib, a keep-alive client), traced by the real agent with `--print=json`.

use ztrace_e2e::checks::{self, Emitter, Exchange};
use ztrace_e2e::clients::{self, KeepaliveClient};
use ztrace_e2e::servers::Server;
use ztrace_e2e::ztrace::SPAN_TIMEOUT;
use ztrace_e2e::{Span, Ztrace};

/// `python3 -m http.server` is named after its module (DESIGN.md: the script name for interpreters).
const HTTP_SERVER: &[&str] = &["http.server"];
const CURL: &[&str] = &["curl"];
const NGINX: &[&str] = &["nginx"];
/// A script's service: its file name without the extension (`/srv/app.py` → `app`).
const FIXTURE_SERVER: &[&str] = &["http_fixture_server"];
const KEEPALIVE_CLIENT: &[&str] = &["keepalive_client"];

fn on_port(port: u16) -> impl Fn(&Span) -> bool {
    move |span| span.server_port() == Some(port)
}

fn split(spans: Vec<Span>) -> (Vec<Span>, Vec<Span>) {
    ztrace_e2e::span::split_by_kind(&spans)
}

/// An nginx worker's spans carry the worker's pid: check it is one of the master's children.
fn assert_nginx_worker(span: &Span, master: u32) {
    let pid = span
        .pid()
        .unwrap_or_else(|| panic!("no process.pid: {span:?}"));
    assert!(
        pid == master || checks::parent_pid(pid) == Some(master),
        "process.pid {pid} is not nginx (master {master}): {span:?}"
    );
}

#[test]
#[ignore = "needs root and eBPF; run by cargo xtask test"]
fn python_http_server_and_curl_give_one_server_and_one_client_span() {
    let server = Server::python_http("127.0.0.1");
    let mut ztrace = Ztrace::start(&["--print=json"]);

    let run = clients::curl(&[server.url("/hello?x=1")]);
    assert_eq!(run.transfers[0].0, 200);

    let (servers, clients) = split(ztrace.wait_for_n_spans(2, on_port(server.port), SPAN_TIMEOUT));
    assert_eq!(
        (servers.len(), clients.len()),
        (1, 1),
        "exactly one server and one client span:\n{servers:?}\n{clients:?}"
    );
    let exchange = Exchange {
        method: "GET",
        name: "GET /hello",
        path: "/hello",
        status_code: 200,
        server_host: "127.0.0.1",
        server_port: server.port,
        client_host: "127.0.0.1",
    };
    checks::server_span(
        &servers[0],
        &exchange,
        &Emitter::new(HTTP_SERVER, server.pid()),
    );
    checks::client_span(&clients[0], &exchange, &Emitter::new(CURL, run.pid));
    assert_eq!(
        servers[0].attr_str("url.query"),
        Some("x=1"),
        "url.query: {:?}",
        servers[0]
    );

    let stopped = ztrace.stop();
    let stats = stopped.stats.unwrap_or_else(|| {
        panic!(
            "no `ztrace stats: {{...}}` line on stderr:\n{}",
            stopped.stderr
        )
    });
    let spans_created = stats
        .get("spans_created")
        .and_then(serde_json::Value::as_u64);
    assert!(
        spans_created.is_some_and(|n| n >= 2),
        "spans_created in {stats:?}"
    );
}

#[test]
#[ignore = "needs root and eBPF; run by cargo xtask test"]
fn nginx_and_curl_keep_alive_three_requests_give_three_spans_each_in_order() {
    let server = Server::nginx();
    let mut ztrace = Ztrace::start(&["--print=json"]);

    let paths = ["/hello", "/items/42", "/index.html"];
    let run = clients::curl(&paths.map(|p| server.url(p)));
    assert_eq!(
        run.transfers,
        vec![(200, 1), (200, 0), (200, 0)],
        "curl must reuse one connection"
    );

    let (servers, clients) = split(ztrace.wait_for_n_spans(6, on_port(server.port), SPAN_TIMEOUT));
    assert_eq!(
        (servers.len(), clients.len()),
        (3, 3),
        "three server and three client spans:\n{servers:?}\n{clients:?}"
    );
    let names = ["GET /hello", "GET /items/{id}", "GET /index.html"];
    for ((path, name), (server_span, client_span)) in
        paths.iter().zip(names).zip(servers.iter().zip(&clients))
    {
        let exchange = Exchange {
            method: "GET",
            name,
            path,
            status_code: 200,
            server_host: "127.0.0.1",
            server_port: server.port,
            client_host: "127.0.0.1",
        };
        checks::server_span(
            server_span,
            &exchange,
            &Emitter {
                services: NGINX,
                pid: None,
            },
        );
        assert_nginx_worker(server_span, server.pid());
        checks::client_span(client_span, &exchange, &Emitter::new(CURL, run.pid));
    }
    for pair in servers.windows(2).chain(clients.windows(2)) {
        assert!(
            pair[0].end_unix_nano() <= pair[1].start_unix_nano(),
            "exchanges on one connection do not overlap:\n{:?}\n{:?}",
            pair[0],
            pair[1]
        );
    }
    let peers: Vec<_> = servers
        .iter()
        .map(|s| s.attr("network.peer.port"))
        .collect();
    assert!(
        peers.windows(2).all(|p| p[0] == p[1]),
        "one connection, one client port: {peers:?}"
    );
    ztrace.stop();
}

#[test]
#[ignore = "needs root and eBPF; run by cargo xtask test"]
fn python_urllib_against_nginx_is_named_from_its_environment() {
    let server = Server::nginx();
    let mut ztrace = Ztrace::start(&["--print=json"]);

    let (pid, codes) = clients::python_urllib(
        &[server.url("/items/7?full=1")],
        &[("OTEL_SERVICE_NAME", "e2e-urllib-client")],
    );
    assert_eq!(codes, [200]);

    let (servers, clients) = split(ztrace.wait_for_n_spans(2, on_port(server.port), SPAN_TIMEOUT));
    assert_eq!(
        (servers.len(), clients.len()),
        (1, 1),
        "one server and one client span:\n{servers:?}\n{clients:?}"
    );
    let exchange = Exchange {
        method: "GET",
        name: "GET /items/{id}",
        path: "/items/7",
        status_code: 200,
        server_host: "127.0.0.1",
        server_port: server.port,
        client_host: "127.0.0.1",
    };
    checks::server_span(
        &servers[0],
        &exchange,
        &Emitter {
            services: NGINX,
            pid: None,
        },
    );
    checks::client_span(
        &clients[0],
        &exchange,
        &Emitter::new(&["e2e-urllib-client"], pid),
    );
    ztrace.stop();
}

#[test]
#[ignore = "needs root and eBPF; run by cargo xtask test"]
fn a_script_that_exits_right_after_its_request_keeps_its_service_name() {
    // The client exits (and stays a zombie until reaped) within milliseconds of its last
    // syscall: the agent must know who it was by then.
    let server = Server::nginx();
    let mut ztrace = Ztrace::start(&["--print=json"]);

    let (pid, codes) = clients::python_urllib(&[server.url("/hello")], &[]);
    assert_eq!(codes, [200]);

    let clients = ztrace.wait_for_spans(
        |s| s.server_port() == Some(server.port) && s.is_client(),
        SPAN_TIMEOUT,
    );
    assert_eq!(clients.len(), 1, "{clients:?}");
    assert_eq!(clients[0].pid(), Some(pid), "{:?}", clients[0]);
    assert_eq!(
        clients[0].service(),
        Some("urllib_get"),
        "a script is named after its file: {:?}",
        clients[0]
    );
    ztrace.stop();
}

#[test]
#[ignore = "needs root and eBPF; run by cargo xtask test"]
fn server_errors_make_error_spans_on_both_sides() {
    let server = Server::nginx();
    let mut ztrace = Ztrace::start(&["--print=json"]);

    let run = clients::curl(&[server.url("/error")]);
    assert_eq!(run.transfers[0].0, 500);

    let (servers, clients) = split(ztrace.wait_for_n_spans(2, on_port(server.port), SPAN_TIMEOUT));
    assert_eq!(
        (servers.len(), clients.len()),
        (1, 1),
        "one server and one client span:\n{servers:?}\n{clients:?}"
    );
    let exchange = Exchange {
        method: "GET",
        name: "GET /error",
        path: "/error",
        status_code: 500,
        server_host: "127.0.0.1",
        server_port: server.port,
        client_host: "127.0.0.1",
    };
    checks::server_span(
        &servers[0],
        &exchange,
        &Emitter {
            services: NGINX,
            pid: None,
        },
    );
    checks::client_span(&clients[0], &exchange, &Emitter::new(CURL, run.pid));
    ztrace.stop();
}

#[test]
#[ignore = "needs root and eBPF; run by cargo xtask test"]
fn a_large_chunked_response_completes_its_spans() {
    let server = Server::fixture("127.0.0.1");
    let mut ztrace = Ztrace::start(&["--print=json"]);

    let run = clients::curl(&[server.url("/large")]);
    assert_eq!(run.transfers[0].0, 200);

    let (servers, clients) = split(ztrace.wait_for_n_spans(2, on_port(server.port), SPAN_TIMEOUT));
    assert_eq!(
        (servers.len(), clients.len()),
        (1, 1),
        "one server and one client span:\n{servers:?}\n{clients:?}"
    );
    let exchange = Exchange {
        method: "GET",
        name: "GET /large",
        path: "/large",
        status_code: 200,
        server_host: "127.0.0.1",
        server_port: server.port,
        client_host: "127.0.0.1",
    };
    checks::server_span(
        &servers[0],
        &exchange,
        &Emitter::new(FIXTURE_SERVER, server.pid()),
    );
    checks::client_span(&clients[0], &exchange, &Emitter::new(CURL, run.pid));
    ztrace.stop();
}

#[test]
#[ignore = "needs root and eBPF; run by cargo xtask test"]
fn ipv6_loopback_peers_are_reported() {
    let server = Server::python_http("::1");
    let mut ztrace = Ztrace::start(&["--print=json"]);

    let run = clients::curl(&[server.url("/hello")]);
    assert_eq!(run.transfers[0].0, 200);

    let (servers, clients) = split(ztrace.wait_for_n_spans(2, on_port(server.port), SPAN_TIMEOUT));
    assert_eq!(
        (servers.len(), clients.len()),
        (1, 1),
        "one server and one client span:\n{servers:?}\n{clients:?}"
    );
    let exchange = Exchange {
        method: "GET",
        name: "GET /hello",
        path: "/hello",
        status_code: 200,
        server_host: "::1",
        server_port: server.port,
        client_host: "::1",
    };
    checks::server_span(
        &servers[0],
        &exchange,
        &Emitter::new(HTTP_SERVER, server.pid()),
    );
    checks::client_span(&clients[0], &exchange, &Emitter::new(CURL, run.pid));
    ztrace.stop();
}

#[test]
#[ignore = "needs root and eBPF; run by cargo xtask test"]
fn a_connection_opened_before_the_agent_started_is_traced() {
    let server = Server::fixture("127.0.0.1");
    let mut client = KeepaliveClient::start("127.0.0.1", server.port, "/ok?before=1", "/items/77");
    let mut ztrace = Ztrace::start(&["--print=json"]);

    client.second();

    let (servers, clients) = split(ztrace.wait_for_n_spans(2, on_port(server.port), SPAN_TIMEOUT));
    assert_eq!(
        (servers.len(), clients.len()),
        (1, 1),
        "one server and one client span (the second request):\n{servers:?}\n{clients:?}"
    );
    let exchange = Exchange {
        method: "GET",
        name: "GET /items/{id}",
        path: "/items/77",
        status_code: 200,
        server_host: "127.0.0.1",
        server_port: server.port,
        client_host: "127.0.0.1",
    };
    checks::server_span(
        &servers[0],
        &exchange,
        &Emitter::new(FIXTURE_SERVER, server.pid()),
    );
    checks::client_span(
        &clients[0],
        &exchange,
        &Emitter::new(KEEPALIVE_CLIENT, client.pid()),
    );
    ztrace.stop();
}
