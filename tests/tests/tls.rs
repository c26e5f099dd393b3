//! TLS end to end: real TLS servers and clients with a certificate made by the test, traced by
//! the real agent through its uprobes on OpenSSL (shared `libssl.so.3`, and linked into
//! `/usr/bin/node`). The spans must be those of the plain-text tests (same names, attributes and
//! links, `url.scheme` https), and the ciphertext of the same connections must give none.

use std::process::Command;
use std::time::Duration;

use ztrace_e2e::checks::{self, Emitter, Exchange};
use ztrace_e2e::postgres::{self, PgServer, BIN_DIR, USER};
use ztrace_e2e::tls::{self, Certs, TlsServer};
use ztrace_e2e::ztrace::{Stopped, SPAN_TIMEOUT};
use ztrace_e2e::{clients, Span, TempDir, Ztrace};

fn on_port(port: u16) -> impl Fn(&Span) -> bool {
    move |span| span.server_port() == Some(port)
}

use ztrace_e2e::span::split_by_kind as split;

fn exchange(name: &'static str, path: &'static str, port: u16) -> Exchange<'static> {
    Exchange {
        method: "GET",
        name,
        path,
        status_code: 200,
        server_host: "127.0.0.1",
        server_port: port,
        client_host: "127.0.0.1",
    }
}

/// Checks one HTTPS exchange seen from both ends: the plain-text checks, `url.scheme` https,
/// and the client span as the parent of the server span.
fn check_pair(
    server: &Span,
    client: &Span,
    ex: &Exchange<'_>,
    server_by: &Emitter<'_>,
    client_by: &Emitter<'_>,
) {
    checks::server_span(server, ex, server_by);
    checks::client_span(client, ex, client_by);
    for span in [server, client] {
        assert_eq!(
            span.attr_str("url.scheme"),
            Some("https"),
            "url.scheme: {span:?}"
        );
    }
    let url = format!("https://127.0.0.1:{}{}", ex.server_port, ex.path);
    assert_eq!(
        client.attr_str("url.full"),
        Some(url.as_str()),
        "url.full: {client:?}"
    );
    checks::linked(client, server);
    assert_eq!(
        server.attr_str("ztrace.link"),
        Some("connection"),
        "ztrace.link: {server:?}"
    );
}

/// The stats line of a stopped agent: `name` as a number.
fn stat(stopped: &Stopped, name: &str) -> u64 {
    stopped
        .stats
        .as_ref()
        .and_then(|s| s.get(name))
        .and_then(|v| v.as_u64())
        .unwrap_or_else(|| panic!("no {name} in the stats line:\n{}", stopped.stderr))
}

/// The attach table lists a library ztrace put probes on (any of `what`).
fn assert_probed(stderr: &str, what: &[&str]) {
    assert!(
        stderr
            .lines()
            .any(|l| l.contains("ok    uprobes") && what.iter().any(|w| l.contains(w))),
        "the attach table does not show {what:?} probed:\n{stderr}"
    );
}

#[test]
#[ignore = "needs root and eBPF; run by cargo xtask test"]
fn curl_to_nginx_over_tls_1_2_and_1_3_gives_the_plain_spans() {
    let certs = Certs::make();
    // nginx runs before the agent starts; each curl starts after.
    let nginx = TlsServer::nginx(&certs, "TLSv1.2 TLSv1.3");
    let mut ztrace = Ztrace::start(&["--print=json"]);
    let cacert = certs.cert.to_str().expect("utf-8 path");
    let mut seen = 0;
    for (version, flags) in [
        ("1.2", ["--tlsv1.2", "--tls-max", "1.2"]),
        ("1.3", ["--tlsv1.3", "--tls-max", "1.3"]),
    ] {
        let url = nginx.url("/hello");
        let run = clients::curl_with(
            &[url.clone(), url],
            &[&["--cacert", cacert][..], &flags[..]].concat(),
        );
        assert_eq!(
            run.transfers,
            vec![(200, 1), (200, 0)],
            "TLS {version}: two requests on one connection"
        );
        seen += 4;
        let spans = ztrace.wait_for_n_spans(seen, on_port(nginx.port), SPAN_TIMEOUT);
        let (servers, clients) = split(&spans);
        assert_eq!(
            (servers.len(), clients.len()),
            (seen / 2, seen / 2),
            "TLS {version}: one server and one client span per request, none from ciphertext:\n{}",
            ztrace_e2e::span::list(&spans)
        );
        let ex = exchange("GET /hello", "/hello", nginx.port);
        for (server, client) in servers[seen / 2 - 2..].iter().zip(&clients[seen / 2 - 2..]) {
            let worker = server.pid().expect("pid");
            assert_eq!(
                checks::parent_pid(worker),
                Some(nginx.pid()),
                "an nginx worker: {server:?}"
            );
            check_pair(
                server,
                client,
                &ex,
                &Emitter::new(&["nginx"], worker),
                &Emitter::new(&["curl"], run.pid),
            );
        }
    }
    let stopped = ztrace.stop();
    assert_probed(&stopped.stderr, &["libssl.so"]);
    assert!(
        stat(&stopped, "conns_tls_records") >= 2,
        "the handshakes were recognized as TLS"
    );
}

#[test]
#[ignore = "needs root and eBPF; run by cargo xtask test"]
fn python_https_server_and_urllib_client_use_the_ex_functions() {
    let certs = Certs::make();
    let mut ztrace = Ztrace::start(&["--print=json"]);
    // Both started after the agent.
    let server = TlsServer::python(&certs);
    let urls = [server.url("/items/1"), server.url("/items/2")];
    let cert = certs.cert.to_str().expect("utf-8 path");
    let (client_pid, codes) = clients::python_urllib(&urls, &[("SSL_CERT_FILE", cert)]);
    assert_eq!(codes, vec![200, 200]);
    let spans = ztrace.wait_for_n_spans(4, on_port(server.port), SPAN_TIMEOUT);
    let (servers, clients) = split(&spans);
    assert_eq!(
        (servers.len(), clients.len()),
        (2, 2),
        "{}",
        ztrace_e2e::span::list(&spans)
    );
    for (i, (server_span, client_span)) in servers.iter().zip(&clients).enumerate() {
        let path = ["/items/1", "/items/2"][i];
        let ex = exchange("GET /items/{id}", path, server.port);
        check_pair(
            server_span,
            client_span,
            &ex,
            &Emitter::new(&["https_server"], server.pid()),
            &Emitter::new(&["urllib_get"], client_pid),
        );
    }
    ztrace.stop();
}

#[test]
#[ignore = "needs root and eBPF; run by cargo xtask test"]
fn node_https_server_and_client_with_openssl_linked_in() {
    let certs = Certs::make();
    // The server runs before the agent starts, the client after.
    let server = TlsServer::node(&certs);
    let mut ztrace = Ztrace::start(&["--print=json"]);
    let urls = [
        server.url("/items/1"),
        server.url("/items/2"),
        server.url("/items/3"),
    ];
    let client_pid = tls::node_get(&certs.cert, &urls);
    let spans = ztrace.wait_for_n_spans(6, on_port(server.port), SPAN_TIMEOUT);
    let (servers, clients) = split(&spans);
    assert_eq!(
        (servers.len(), clients.len()),
        (3, 3),
        "{}",
        ztrace_e2e::span::list(&spans)
    );
    for client_span in &clients {
        let path = client_span.url_path().expect("url.path");
        let server_span = servers
            .iter()
            .find(|s| s.parent_span_id() == Some(client_span.span_id()))
            .unwrap_or_else(|| {
                panic!(
                    "no server span is the child of {client_span:?}\n{}",
                    ztrace_e2e::span::list(&servers)
                )
            });
        let path: &'static str = ["/items/1", "/items/2", "/items/3"]
            .into_iter()
            .find(|p| *p == path)
            .expect("a path the client asked for");
        let ex = exchange("GET /items/{id}", path, server.port);
        check_pair(
            server_span,
            client_span,
            &ex,
            &Emitter::new(&["node_https_server"], server.pid()),
            &Emitter::new(&["node_https_get"], client_pid),
        );
    }
    let stopped = ztrace.stop();
    // NodeSource's node has OpenSSL linked in; Debian's uses the shared libssl.
    assert_probed(&stopped.stderr, &["/usr/bin/node", "libssl.so"]);
}

#[test]
#[ignore = "needs root and eBPF; run by cargo xtask test"]
fn psql_and_pgbench_with_sslmode_require_give_the_postgres_spans() {
    let certs = Certs::make();
    for file in [&certs.cert, &certs.key] {
        PgServer::chown_to_postgres(file);
    }
    let cert = format!("ssl_cert_file={}", certs.cert.display());
    let key = format!("ssl_key_file={}", certs.key.display());
    let server = PgServer::start_with(&["ssl=on", &cert, &key]);
    let mut ztrace = Ztrace::start(&["--print=json"]);
    let conninfo = format!(
        "host=127.0.0.1 port={} user={USER} dbname=postgres sslmode=require",
        server.port
    );

    let mut psql = Command::new(format!("{BIN_DIR}/psql"));
    psql.args([
        "-X",
        "-A",
        "-t",
        &conninfo,
        "-c",
        "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
    ]);
    let run = postgres::run("psql", &mut psql);
    assert!(
        run.success && run.stdout.trim() == "t",
        "psql over TLS: {} {}",
        run.stdout,
        run.stderr
    );

    let to_server = |span: &Span| {
        span.attr_str("db.system.name") == Some("postgresql")
            && span.server_port() == Some(server.port)
    };
    let spans = ztrace.wait_for_n_spans(2, to_server, SPAN_TIMEOUT);
    let (servers, clients) = split(&spans);
    assert_eq!(
        (servers.len(), clients.len()),
        (1, 1),
        "{}",
        ztrace_e2e::span::list(&spans)
    );
    for span in [&servers[0], &clients[0]] {
        assert_eq!(span.name(), Some("SELECT pg_stat_ssl"), "name: {span:?}");
        assert_eq!(
            span.attr_str("db.query.text"),
            Some("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"),
            "{span:?}"
        );
        assert_eq!(
            span.attr_str("db.namespace"),
            Some("postgres"),
            "db.namespace: {span:?}"
        );
        assert_eq!(
            span.attr_i64("db.response.returned_rows"),
            Some(1),
            "{span:?}"
        );
    }
    assert_eq!(
        clients[0].pid(),
        Some(run.pid),
        "the psql client span: {:?}",
        clients[0]
    );
    checks::linked(&clients[0], &servers[0]);

    // pgbench, prepared statements, over TLS: one span per statement on each side.
    let script =
        std::env::temp_dir().join(format!("ztrace-tls-pgbench-{}.sql", std::process::id()));
    std::fs::write(&script, "SELECT 1 AS one;\n").expect("write script");
    let mut pgbench = Command::new(format!("{BIN_DIR}/pgbench"));
    pgbench
        .args(["-n", "-M", "prepared", "-t", "5", "-f"])
        .arg(&script)
        .arg(&conninfo);
    let bench = postgres::run("pgbench", &mut pgbench);
    let _ = std::fs::remove_file(&script);
    assert!(
        bench.success,
        "pgbench over TLS: {} {}",
        bench.stdout, bench.stderr
    );
    let from_bench =
        |span: &Span| to_server(span) && span.name() == Some("SELECT") && span.is_client();
    let spans = ztrace.wait_for_n_spans(5, from_bench, SPAN_TIMEOUT);
    assert_eq!(
        spans.len(),
        5,
        "five pgbench statements:\n{}",
        ztrace_e2e::span::list(&spans)
    );
    for span in &spans {
        assert_eq!(
            span.attr_str("db.query.text"),
            Some("SELECT ? AS one;"),
            "{span:?}"
        );
        assert_eq!(span.pid(), Some(bench.pid), "{span:?}");
    }
    let stopped = ztrace.stop();
    assert_probed(&stopped.stderr, &["libssl.so"]);
}

#[test]
#[ignore = "needs root and eBPF; run by cargo xtask test"]
fn java_https_client_gives_no_wrong_spans_and_the_table_says_why() {
    let certs = Certs::make();
    let server = TlsServer::python(&certs);
    let mut ztrace = Ztrace::start(&["--print=json"]);
    let java = tls::java_get(&server.url("/items/7"));
    // The Python server's side is traced (OpenSSL); Java's own TLS is not.
    // (wait_for_spans waits a while after the first: a wrong client span would show up too.)
    let spans = ztrace.wait_for_spans(on_port(server.port), SPAN_TIMEOUT);
    let (servers, clients) = split(&spans);
    assert_eq!(
        (servers.len(), clients.len()),
        (1, 0),
        "only the server's span:\n{}",
        ztrace_e2e::span::list(&spans)
    );
    checks::server_span(
        &servers[0],
        &exchange("GET /items/{id}", "/items/7", server.port),
        &Emitter::new(&["https_server"], server.pid()),
    );
    assert!(
        spans.iter().all(|s| s.pid() != Some(java)),
        "no span from the Java process: {spans:?}"
    );
    let stopped = ztrace.stop();
    assert!(
        stopped
            .stderr
            .lines()
            .any(|l| l.contains("skip  uprobes   Java") && l.contains("JSSE")),
        "the attach table says why Java is not traced:\n{}",
        stopped.stderr
    );
}

/// Runs a short-lived client (`run` returns its pid) until one of its runs is traced as `traced`
/// says: a program started after the agent may get its probes only after its first requests.
/// Panics after ten runs.
fn run_until_traced(
    ztrace: &mut Ztrace,
    what: &str,
    mut run: impl FnMut() -> u32,
    traced: impl Fn(&[Span], u32) -> bool,
) -> u32 {
    for _ in 0..10 {
        let pid = run();
        std::thread::sleep(Duration::from_millis(500));
        if traced(&ztrace.spans(), pid) {
            return pid;
        }
    }
    panic!("no run of {what} was traced:\n{}", ztrace.report())
}

#[test]
#[ignore = "needs root and eBPF; run by cargo xtask test"]
fn go_crypto_tls_server_client_and_stripped_hey() {
    let certs = Certs::make();
    let dir = TempDir::new("go-build");
    let binary = tls::build_go_https(dir.path(), "go");
    // The server runs before the agent starts, the clients after.
    let server = TlsServer::go(&binary, &certs);
    let mut ztrace = Ztrace::start(&["--print=json"]);
    let urls = [server.url("/items/1"), server.url("/items/2")];
    let client_pid = tls::go_get(&binary, &certs.cert, &urls);
    let spans = ztrace.wait_for_n_spans(4, on_port(server.port), SPAN_TIMEOUT);
    let (servers, clients) = split(&spans);
    assert_eq!(
        (servers.len(), clients.len()),
        (2, 2),
        "{}",
        ztrace_e2e::span::list(&spans)
    );
    for (i, (server_span, client_span)) in servers.iter().zip(&clients).enumerate() {
        let ex = exchange("GET /items/{id}", ["/items/1", "/items/2"][i], server.port);
        check_pair(
            server_span,
            client_span,
            &ex,
            &Emitter::new(&["go_https"], server.pid()),
            &Emitter::new(&["go_https"], client_pid),
        );
    }

    // hey, stripped: its functions are found through .gopclntab when its first run execs; that
    // first run may be over before the probes are in, so it is run until one is traced.
    let from_hey =
        |pid: u32| move |s: &Span| on_port(server.port)(s) && s.is_client() && s.pid() == Some(pid);
    let hey_pid = run_until_traced(
        &mut ztrace,
        "hey",
        || tls::hey(3, &server.url("/items/3")),
        |spans, pid| spans.iter().any(from_hey(pid)),
    );
    let hey_spans = ztrace.wait_for_n_spans(3, from_hey(hey_pid), SPAN_TIMEOUT);
    assert_eq!(
        hey_spans.len(),
        3,
        "three requests: {}",
        ztrace_e2e::span::list(&hey_spans)
    );
    let all = ztrace.spans();
    for client_span in &hey_spans {
        let server_span = all
            .iter()
            .find(|s| s.parent_span_id() == Some(client_span.span_id()))
            .unwrap_or_else(|| panic!("no server span is the child of {client_span:?}"));
        check_pair(
            server_span,
            client_span,
            &exchange("GET /items/{id}", "/items/3", server.port),
            &Emitter::new(&["go_https"], server.pid()),
            &Emitter::new(&["hey"], hey_pid),
        );
    }
    let stopped = ztrace.stop();
    assert_probed(&stopped.stderr, &["Go crypto/tls /"]);
    assert_probed(
        &stopped.stderr,
        &["Go crypto/tls (stripped, symbols from .gopclntab) /usr/bin/hey"],
    );
    assert!(
        stopped.stderr.lines().any(|l| l.contains("/usr/bin/hey")
            && l.contains("struct offsets from the Go version table")),
        "stripped hey has no DWARF: its offsets come from the table:\n{}",
        stopped.stderr
    );
}

#[test]
#[ignore = "needs root and eBPF; run by cargo xtask test"]
fn go_1_23_crypto_tls_server_and_client() {
    let certs = Certs::make();
    let dir = TempDir::new("go-build");
    let binary = tls::build_go_https(dir.path(), tls::NEWER_GO);
    // Both started after the agent, so that their probes come from exec events; probes are
    // detached 2 s after the binary's last process exited.
    let mut ztrace = Ztrace::start(&["--print=json", "--tls-detach-after=2s"]);
    let server = TlsServer::go(&binary, &certs);
    check_go_run(&mut ztrace, &binary, &certs, &server);
    // The server and client gone, no process maps the binary: its probes are detached...
    drop(server);
    ztrace.wait_for_log(
        &format!("from Go crypto/tls {}", binary.display()),
        Duration::from_secs(30),
    );
    // ... and attached again when it runs again.
    let server = TlsServer::go(&binary, &certs);
    check_go_run(&mut ztrace, &binary, &certs, &server);
    let stopped = ztrace.stop();
    // Only this test's binary (another test's Go 1.23 binary may run at the same time); its offsets
    // come from its DWARF (go build keeps it): the kernel follows them, not the table.
    let probed = stopped
        .stderr
        .lines()
        .filter(|l| {
            l.contains(&format!(
                "ok    uprobes   Go crypto/tls {} (go1.23",
                binary.display()
            )) && l.contains("struct offsets from its DWARF")
        })
        .count();
    assert_eq!(probed, 2, "the attach table shows the Go 1.23 binary probed (offsets from DWARF), then probed again:\n{}", stopped.stderr);
}

/// Runs the Go client against `server` until both ends of one of its runs are traced (a server
/// started after the agent may get its probes after its first exchange), and checks the pairs.
fn check_go_run(ztrace: &mut Ztrace, binary: &std::path::Path, certs: &Certs, server: &TlsServer) {
    let urls = [server.url("/items/1"), server.url("/items/2")];
    let mine = |spans: &[Span], pid: u32| -> Vec<Span> {
        let mut clients: Vec<Span> = spans
            .iter()
            .filter(|s| on_port(server.port)(s) && s.is_client() && s.pid() == Some(pid))
            .cloned()
            .collect();
        clients.sort_by_key(Span::start_unix_nano);
        clients
    };
    let client_pid = run_until_traced(
        ztrace,
        "the Go 1.23 client (at both ends)",
        || tls::go_get(binary, &certs.cert, &urls),
        |spans, pid| {
            let clients = mine(spans, pid);
            clients.len() == 2
                && clients.iter().all(|c| {
                    spans
                        .iter()
                        .any(|s| s.parent_span_id() == Some(c.span_id()))
                })
        },
    );
    let spans = ztrace.spans();
    for (i, client_span) in mine(&spans, client_pid).iter().enumerate() {
        let server_span = spans
            .iter()
            .find(|s| s.parent_span_id() == Some(client_span.span_id()))
            .unwrap_or_else(|| panic!("no server span is the child of {client_span:?}"));
        check_pair(
            server_span,
            client_span,
            &exchange("GET /items/{id}", ["/items/1", "/items/2"][i], server.port),
            &Emitter::new(&["go_https"], server.pid()),
            &Emitter::new(&["go_https"], client_pid),
        );
    }
}
