//! PostgreSQL end to end: a real PostgreSQL 15 server on a free loopback port, and real clients
//! (psql, pgbench in prepared mode, Python psycopg2, compiled Go clients on lib/pq and pgx, Java on
//! the JDBC driver), traced by the real agent with
//! `--print=json`. Every query is a CLIENT span of the client and a SERVER span of the postgres
//! backend that ran it, the latter the child of the former (`ztrace.link = connection`).

use ztrace_e2e::checks;
use ztrace_e2e::postgres::{build_pgx_client, build_pq_client, PgServer};
use ztrace_e2e::ztrace::SPAN_TIMEOUT;
use ztrace_e2e::{Span, TempDir, Ztrace};

/// Spans of queries sent to this server (both sides report the server's port).
fn to_server(port: u16) -> impl Fn(&Span) -> bool {
    move |span| {
        span.attr_str("db.system.name") == Some("postgresql") && span.server_port() == Some(port)
    }
}

use ztrace_e2e::span::split_by_kind as split;

/// What a test knows about one statement it ran.
struct Query<'a> {
    name: &'a str,
    operation: &'a str,
    collection: Option<&'a str>,
    /// `db.query.text`: the SQL with literals as `?`.
    text: &'a str,
    rows: Option<i64>,
    /// SQLSTATE of a failing statement.
    error: Option<&'a str>,
}

/// Checks a span of `query` field by field; `service`/`pid` say who must have emitted it.
fn check_span(span: &Span, kind: &str, query: &Query<'_>, port: u16, service: &str) {
    assert_eq!(span.kind(), Some(kind), "kind: {span:?}");
    assert_eq!(span.name(), Some(query.name), "name: {span:?}");
    assert_eq!(span.service(), Some(service), "service: {span:?}");
    assert_eq!(
        span.attr_str("db.system.name"),
        Some("postgresql"),
        "db.system.name: {span:?}"
    );
    assert_eq!(
        span.attr_str("db.namespace"),
        Some("postgres"),
        "db.namespace: {span:?}"
    );
    assert_eq!(
        span.attr_str("db.query.text"),
        Some(query.text),
        "db.query.text: {span:?}"
    );
    assert_eq!(
        span.attr_str("db.operation.name"),
        Some(query.operation),
        "db.operation.name: {span:?}"
    );
    assert_eq!(
        span.attr_str("db.collection.name"),
        query.collection,
        "db.collection.name: {span:?}"
    );
    assert_eq!(
        span.attr_i64("db.response.returned_rows"),
        query.rows,
        "db.response.returned_rows: {span:?}"
    );
    assert_eq!(
        span.attr_str("db.response.status_code"),
        query.error,
        "db.response.status_code: {span:?}"
    );
    assert_eq!(
        span.status(),
        Some(if query.error.is_some() {
            "error"
        } else {
            "unset"
        }),
        "status: {span:?}"
    );
    assert_eq!(
        span.attr_str("server.address"),
        Some("127.0.0.1"),
        "server.address: {span:?}"
    );
    assert_eq!(
        span.attr_i64("server.port"),
        Some(i64::from(port)),
        "server.port: {span:?}"
    );
    assert_eq!(
        span.attr_str("network.peer.address"),
        Some("127.0.0.1"),
        "network.peer.address: {span:?}"
    );
    assert_eq!(
        span.attr("db.user"),
        None,
        "db.user is not exported: {span:?}"
    );
    let duration = span
        .duration_nanos()
        .unwrap_or_else(|| panic!("start <= end: {span:?}"));
    assert!(
        duration < 10_000_000_000,
        "a query of this test takes well under 10 s: {span:?}"
    );
}

/// The server span whose parent is `client`, checked as its child.
fn child_of<'a>(client: &Span, servers: &'a [Span]) -> &'a Span {
    let server = servers
        .iter()
        .find(|s| s.parent_span_id() == Some(client.span_id()))
        .unwrap_or_else(|| {
            panic!(
                "no server span is the child of {client:?}\nservers:\n{}",
                ztrace_e2e::span::list(servers)
            )
        });
    checks::linked(client, server);
    assert_eq!(
        server.attr_str("ztrace.link"),
        Some("connection"),
        "ztrace.link: {server:?}"
    );
    assert_eq!(
        client.attr_str("ztrace.link"),
        Some("none"),
        "ztrace.link: {client:?}"
    );
    server
}

/// A backend is a process of the postgres executable forked by the postmaster (by the time
/// spans are checked it may have exited, so its parent cannot be read any more).
fn assert_backend(span: &Span, postmaster: u32) {
    let pid = span
        .pid()
        .unwrap_or_else(|| panic!("no process.pid: {span:?}"));
    assert_ne!(
        pid, postmaster,
        "a backend, not the postmaster, runs queries: {span:?}"
    );
    assert_eq!(
        span.resource_str("process.executable.name"),
        Some("postgres"),
        "process.executable.name: {span:?}"
    );
    if let Some(parent) = checks::parent_pid(pid) {
        assert_eq!(
            parent, postmaster,
            "process.pid {pid} is a backend of {postmaster}: {span:?}"
        );
    }
}

#[test]
#[ignore = "needs root and eBPF; run by cargo xtask test"]
fn psql_query_and_failing_query_give_linked_client_and_server_spans() {
    let server = PgServer::start();
    let mut ztrace = Ztrace::start(&["--print=json"]);

    let ok =
        server.psql("SELECT 42 AS answer, 'x' AS letter FROM pg_class WHERE relname = 'pg_proc'");
    assert!(ok.success, "psql failed: {}", ok.stderr);
    assert!(ok.stdout.contains("42"), "psql printed {}", ok.stdout);
    let failed = server.psql("SELECT * FROM no_such_table");
    assert!(!failed.success, "the query must fail: {}", failed.stdout);

    let spans = ztrace.wait_for_n_spans(4, to_server(server.port), SPAN_TIMEOUT);
    let (servers, clients) = split(&spans);
    assert_eq!(
        (servers.len(), clients.len()),
        (2, 2),
        "two client and two server spans:\n{}",
        ztrace_e2e::span::list(&spans)
    );

    let select = Query {
        name: "SELECT pg_class",
        operation: "SELECT",
        collection: Some("pg_class"),
        text: "SELECT ? AS answer, ? AS letter FROM pg_class WHERE relname = ?",
        rows: Some(1),
        error: None,
    };
    let failing = Query {
        name: "SELECT no_such_table",
        operation: "SELECT",
        collection: Some("no_such_table"),
        text: "SELECT * FROM no_such_table",
        rows: None,
        error: Some("42P01"),
    };
    for (client, query, pid) in [
        (&clients[0], &select, ok.pid),
        (&clients[1], &failing, failed.pid),
    ] {
        check_span(client, "client", query, server.port, "psql");
        assert_eq!(client.pid(), Some(pid), "process.pid: {client:?}");
        let backend = child_of(client, &servers);
        check_span(backend, "server", query, server.port, "postgres");
        assert_backend(backend, server.pid());
    }
    assert_eq!(
        clients[0].attr_str("db.postgresql.application_name"),
        Some("psql")
    );
    assert_eq!(
        servers[1].attr_str("error.type"),
        Some("42P01"),
        "error.type: {:?}",
        servers[1]
    );
    ztrace.stop();
}

#[test]
#[ignore = "needs root and eBPF; run by cargo xtask test"]
fn pgbench_prepared_gives_one_span_per_execution_with_the_statement_text() {
    const TRANSACTIONS: usize = 20;
    let server = PgServer::start();
    let init = server.pgbench(&["-i", "-q", "-s", "1"]);
    assert!(init.success, "pgbench -i failed: {}", init.stderr);
    let mut ztrace = Ztrace::start(&["--print=json"]);

    let run = server.pgbench(&[
        "-n",
        "-M",
        "prepared",
        "-c",
        "1",
        "-t",
        &TRANSACTIONS.to_string(),
    ]);
    assert!(
        run.success,
        "pgbench failed: {}\n{}",
        run.stdout, run.stderr
    );

    let port = server.port;
    let accounts =
        move |s: &Span| to_server(port)(s) && s.name() == Some("UPDATE pgbench_accounts");
    ztrace.wait_for_n_spans(2 * TRANSACTIONS, accounts, SPAN_TIMEOUT);
    let spans: Vec<Span> = ztrace.spans().into_iter().filter(to_server(port)).collect();
    let (servers, clients) = split(&spans);

    // The built-in TPC-B-like script: seven statements per transaction, each prepared once.
    let statements = [
        ("BEGIN", "BEGIN", None, "BEGIN;", Some(0)),
        (
            "UPDATE pgbench_accounts",
            "UPDATE",
            Some("pgbench_accounts"),
            "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2;",
            Some(1),
        ),
        ("SELECT pgbench_accounts", "SELECT", Some("pgbench_accounts"), "SELECT abalance FROM pgbench_accounts WHERE aid = $1;", Some(1)),
        ("UPDATE pgbench_tellers", "UPDATE", Some("pgbench_tellers"), "UPDATE pgbench_tellers SET tbalance = tbalance + $1 WHERE tid = $2;", Some(1)),
        ("UPDATE pgbench_branches", "UPDATE", Some("pgbench_branches"), "UPDATE pgbench_branches SET bbalance = bbalance + $1 WHERE bid = $2;", Some(1)),
        (
            "INSERT pgbench_history",
            "INSERT",
            Some("pgbench_history"),
            "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES ($1, $2, $3, $4, CURRENT_TIMESTAMP);",
            Some(1),
        ),
        ("END", "END", None, "END;", Some(0)),
    ];
    for (name, operation, collection, text, rows) in statements {
        let of_statement: Vec<&Span> = clients.iter().filter(|s| s.name() == Some(name)).collect();
        assert_eq!(
            of_statement.len(),
            TRANSACTIONS,
            "one client span per execution of {name}:\n{}",
            ztrace_e2e::span::list(&clients)
        );
        let query = Query {
            name,
            operation,
            collection,
            text,
            rows,
            error: None,
        };
        for client in of_statement {
            check_span(client, "client", &query, port, "pgbench");
            assert_eq!(client.pid(), Some(run.pid), "process.pid: {client:?}");
            let backend = child_of(client, &servers);
            check_span(backend, "server", &query, port, "postgres");
            assert_backend(backend, server.pid());
        }
    }
    ztrace.stop();
}

#[test]
#[ignore = "needs root and eBPF; run by cargo xtask test"]
fn psycopg2_parameterized_query_never_shows_its_values() {
    let server = PgServer::start();
    let mut ztrace = Ztrace::start(&["--print=json"]);

    let run = server.psycopg2_client();
    assert!(run.success, "psycopg2 client failed: {}", run.stderr);
    assert_eq!(run.stdout.trim(), "42");

    let spans = ztrace.wait_for_n_spans(6, to_server(server.port), SPAN_TIMEOUT);
    let (servers, clients) = split(&spans);
    let names: Vec<_> = clients
        .iter()
        .map(|s| s.name().unwrap_or_default())
        .collect();
    assert_eq!(
        names,
        ["BEGIN", "SELECT", "COMMIT"],
        "psycopg2 wraps the query in a transaction:\n{}",
        ztrace_e2e::span::list(&spans)
    );
    let select = Query {
        name: "SELECT",
        operation: "SELECT",
        collection: None,
        text: "SELECT ?::int + ? AS n, ? AS secret",
        rows: Some(1),
        error: None,
    };
    check_span(&clients[1], "client", &select, server.port, "pg_client");
    assert_eq!(clients[1].pid(), Some(run.pid));
    let backend = child_of(&clients[1], &servers);
    check_span(backend, "server", &select, server.port, "postgres");
    assert_eq!(
        clients[1].attr_str("db.postgresql.application_name"),
        Some("pg_client")
    );
    for span in &spans {
        let json = span.0.to_string();
        assert!(
            !json.contains("hunter2"),
            "a parameter value leaked: {json}"
        );
    }
    ztrace.stop();
}

#[test]
#[ignore = "needs root and eBPF; run by cargo xtask test"]
fn a_connection_opened_before_ztrace_is_recognized_from_its_queries() {
    let server = PgServer::start();
    let mut client = server.psycopg2_waiting();
    let mut ztrace = Ztrace::start(&["--print=json"]);

    let run = client.go();
    assert!(run.success, "psycopg2 client failed: {}", run.stderr);

    let port = server.port;
    let select = move |s: &Span| to_server(port)(s) && s.name() == Some("SELECT");
    let spans = ztrace.wait_for_n_spans(2, select, SPAN_TIMEOUT);
    let (servers, clients) = split(&spans);
    assert_eq!(
        (servers.len(), clients.len()),
        (1, 1),
        "{}",
        ztrace_e2e::span::list(&spans)
    );
    let client_span = &clients[0];
    assert_eq!(client_span.pid(), Some(client.pid()));
    assert_eq!(
        client_span.attr_str("db.query.text"),
        Some("SELECT ?::int + ? AS n, ? AS secret")
    );
    assert_eq!(client_span.attr_str("db.operation.name"), Some("SELECT"));
    // The startup packet was before ztrace: the database is not known.
    assert_eq!(
        client_span.attr_str("db.namespace"),
        None,
        "{client_span:?}"
    );
    let backend = child_of(client_span, &servers);
    assert_backend(backend, server.pid());
    ztrace.stop();
}

#[test]
#[ignore = "needs root and eBPF; run by cargo xtask test"]
fn go_lib_pq_prepared_executions_and_a_statement_rejected_at_parse() {
    let build = TempDir::new("pq-client");
    let binary = build_pq_client(build.path());
    let server = PgServer::start();
    let mut ztrace = Ztrace::start(&["--print=json"]);

    let run = server.go_client(&binary);
    assert!(run.success, "pq_client failed: {}", run.stderr);
    assert_eq!(
        run.stdout.lines().collect::<Vec<_>>(),
        ["2", "4", "6", "error 42P01"]
    );

    let spans = ztrace.wait_for_n_spans(8, to_server(server.port), SPAN_TIMEOUT);
    let (servers, clients) = split(&spans);
    assert_eq!(
        (servers.len(), clients.len()),
        (4, 4),
        "preparing alone makes no span:\n{}",
        ztrace_e2e::span::list(&spans)
    );
    let doubled = Query {
        name: "SELECT",
        operation: "SELECT",
        collection: None,
        text: "SELECT $1::int * ? AS doubled",
        rows: Some(1),
        error: None,
    };
    let missing = Query {
        name: "SELECT missing_table",
        operation: "SELECT",
        collection: Some("missing_table"),
        text: "SELECT * FROM missing_table WHERE id = $1",
        rows: None,
        error: Some("42P01"),
    };
    for (client, query) in clients.iter().zip([&doubled, &doubled, &doubled, &missing]) {
        check_span(client, "client", query, server.port, "pq_client");
        assert_eq!(client.pid(), Some(run.pid), "process.pid: {client:?}");
        assert_eq!(
            client.attr("db.query.parameter.0"),
            None,
            "bind values are opt-in: {client:?}"
        );
        assert_eq!(
            client.attr_str("db.postgresql.application_name"),
            Some("pq_client")
        );
        let backend = child_of(client, &servers);
        check_span(backend, "server", query, server.port, "postgres");
        assert_backend(backend, server.pid());
    }
    ztrace.stop();
}

#[test]
#[ignore = "needs root and eBPF; run by cargo xtask test"]
fn a_query_longer_than_the_capture_keeps_its_span_with_the_sql_cut() {
    let server = PgServer::start();
    let mut ztrace = Ztrace::start(&["--print=json"]);

    // About 9 KiB of SQL in one write: the kernel copies 4 KiB, a gap, and the last 64 bytes.
    let ids: Vec<String> = (1..=2000).map(|i| i.to_string()).collect();
    let sql = format!(
        "SELECT count(*) FROM pg_class WHERE oid IN ({})",
        ids.join(", ")
    );
    let run = server.psql(&sql);
    assert!(run.success, "psql failed: {}", run.stderr);

    let spans = ztrace.wait_for_n_spans(2, to_server(server.port), SPAN_TIMEOUT);
    let (servers, clients) = split(&spans);
    assert_eq!(
        (servers.len(), clients.len()),
        (1, 1),
        "{}",
        ztrace_e2e::span::list(&spans)
    );
    for span in [&clients[0], &servers[0]] {
        assert_eq!(span.name(), Some("SELECT pg_class"), "{span:?}");
        let text = span.attr_str("db.query.text").unwrap_or_default();
        assert!(
            text.starts_with("SELECT count(*) FROM pg_class WHERE oid IN (?, ?, ?, "),
            "db.query.text: {span:?}"
        );
        assert!(
            text.len() < 4096 && !text.contains(char::is_numeric),
            "cut, literals replaced: {span:?}"
        );
        assert_eq!(
            span.attr_i64("db.response.returned_rows"),
            Some(1),
            "{span:?}"
        );
    }
    child_of(&clients[0], &servers);
    ztrace.stop();
}

#[test]
#[ignore = "needs root and eBPF; run by cargo xtask test"]
fn go_pgx_cached_statements_a_pipelined_batch_and_bind_values_when_asked() {
    let build = TempDir::new("pgx-client");
    let binary = build_pgx_client(build.path());
    let server = PgServer::start();
    let mut ztrace = Ztrace::start(&["--print=json", "--db-query-parameters"]);

    let run = server.go_client(&binary);
    assert!(run.success, "pgx_client failed: {}", run.stderr);
    assert_eq!(
        run.stdout.lines().collect::<Vec<_>>(),
        ["2", "3", "4", "ALPHA", "BETA", "error 42P01"]
    );

    let spans = ztrace.wait_for_n_spans(12, to_server(server.port), SPAN_TIMEOUT);
    let (servers, clients) = split(&spans);
    assert_eq!(
        (servers.len(), clients.len()),
        (6, 6),
        "one span per execution:\n{}",
        ztrace_e2e::span::list(&spans)
    );
    let next = Query {
        name: "SELECT",
        operation: "SELECT",
        collection: None,
        text: "SELECT $1::int8 + ? AS next",
        rows: Some(1),
        error: None,
    };
    let word = Query {
        text: "SELECT upper($1::text) AS word",
        ..next
    };
    let missing = Query {
        name: "INSERT missing_table",
        operation: "INSERT",
        collection: Some("missing_table"),
        text: "INSERT INTO missing_table VALUES ($1)",
        rows: None,
        error: Some("42P01"),
    };
    // pgx sends parameters in binary, typed by the server's description of the statement.
    let expected = [
        (&next, Some("1")),
        (&next, Some("2")),
        (&next, Some("3")),
        (&word, Some("alpha")),
        (&word, Some("beta")),
        (&missing, None),
    ];
    for (client, (query, value)) in clients.iter().zip(expected) {
        check_span(client, "client", query, server.port, "pgx_client");
        assert_eq!(client.pid(), Some(run.pid), "process.pid: {client:?}");
        assert_eq!(
            client.attr_str("db.query.parameter.0"),
            value,
            "db.query.parameter.0: {client:?}"
        );
        let backend = child_of(client, &servers);
        check_span(backend, "server", query, server.port, "postgres");
        assert_eq!(
            backend.attr_str("db.query.parameter.0"),
            value,
            "db.query.parameter.0: {backend:?}"
        );
        assert_backend(backend, server.pid());
    }
    ztrace.stop();
}

#[test]
#[ignore = "needs root and eBPF; run by cargo xtask test"]
fn java_jdbc_prepared_statement_a_batch_and_an_error() {
    let server = PgServer::start();
    let mut ztrace = Ztrace::start(&["--print=json", "--db-query-parameters"]);

    let run = server.jdbc_client();
    assert!(run.success, "JdbcClient failed: {}", run.stderr);
    assert_eq!(
        run.stdout.lines().collect::<Vec<_>>(),
        ["3", "6", "9", "12", "15", "18", "batch 3", "error 42P01"]
    );

    // The driver's own two SETs at connect, six executions, the CREATE, three inserts, the error.
    let spans = ztrace.wait_for_n_spans(26, to_server(server.port), SPAN_TIMEOUT);
    let (servers, clients) = split(&spans);
    assert_eq!(
        (servers.len(), clients.len()),
        (13, 13),
        "one span per statement:\n{}",
        ztrace_e2e::span::list(&spans)
    );
    let set = |text| Query {
        name: "SET",
        operation: "SET",
        collection: None,
        text,
        rows: Some(0),
        error: None,
    };
    let tripled = Query {
        name: "SELECT",
        operation: "SELECT",
        collection: None,
        text: "SELECT $1::int * ? AS tripled",
        rows: Some(1),
        error: None,
    };
    let create = Query {
        name: "CREATE notes",
        operation: "CREATE",
        collection: Some("notes"),
        text: "CREATE TEMP TABLE notes (id int, body text)",
        rows: Some(0),
        error: None,
    };
    let insert = Query {
        name: "INSERT notes",
        operation: "INSERT",
        collection: Some("notes"),
        text: "INSERT INTO notes VALUES ($1, $2)",
        rows: Some(1),
        error: None,
    };
    let missing = Query {
        name: "SELECT missing_table",
        operation: "SELECT",
        collection: Some("missing_table"),
        text: "SELECT * FROM missing_table",
        rows: None,
        error: Some("42P01"),
    };
    let mut expected = vec![
        (set("SET extra_float_digits = ?"), vec![]),
        (set("SET application_name = ?"), vec![]),
    ];
    for i in 1..=6 {
        expected.push((Query { ..tripled }, vec![i.to_string()]));
    }
    expected.push((create, vec![]));
    for i in 1..=3 {
        expected.push((Query { ..insert }, vec![i.to_string(), format!("note {i}")]));
    }
    expected.push((missing, vec![]));
    for (client, (query, values)) in clients.iter().zip(&expected) {
        check_span(client, "client", query, server.port, "JdbcClient");
        assert_eq!(client.pid(), Some(run.pid), "process.pid: {client:?}");
        let backend = child_of(client, &servers);
        check_span(backend, "server", query, server.port, "postgres");
        for span in [client, backend] {
            for (i, value) in values.iter().enumerate() {
                let key = format!("db.query.parameter.{i}");
                assert_eq!(span.attr_str(&key), Some(value.as_str()), "{key}: {span:?}");
            }
        }
    }
    ztrace.stop();
}
