//! Redis end to end: a real Redis 7 server on a free loopback port and real clients (redis-cli,
//! redis-benchmark pipelining 16 commands per write, Python redis-py in RESP2 and RESP3 with a
//! password), traced by the real agent with `--print=json`. Every command is a CLIENT span of
//! the client and a SERVER span of redis-server, the latter the child of the former
//! (`ztrace.link = connection`); keys are kept, values never leave the host.

use ztrace_e2e::checks;
use ztrace_e2e::redis::RedisServer;
use ztrace_e2e::span::{list, split_by_kind as split};
use ztrace_e2e::ztrace::SPAN_TIMEOUT;
use ztrace_e2e::{Span, Ztrace};

/// Redis spans of commands sent to this server, and of messages delivered by it (both sides
/// report the server's port).
fn to_server(port: u16) -> impl Fn(&Span) -> bool + Clone {
    move |span| {
        (span.attr_str("db.system.name") == Some("redis")
            || span.attr_str("messaging.system") == Some("redis"))
            && span.server_port() == Some(port)
    }
}

/// The server span whose parent is `client`, checked as its child.
fn child_of<'a>(client: &Span, servers: &'a [Span]) -> &'a Span {
    let server = servers
        .iter()
        .find(|s| s.parent_span_id() == Some(client.span_id()))
        .unwrap_or_else(|| {
            panic!(
                "no server span is the child of {client:?}\nservers:\n{}",
                list(servers)
            )
        });
    checks::linked(client, server);
    assert_eq!(
        server.attr_str("ztrace.link"),
        Some("connection"),
        "ztrace.link: {server:?}"
    );
    for key in [
        "db.query.text",
        "db.operation.name",
        "db.namespace",
        "db.response.status_code",
    ] {
        assert_eq!(
            server.attr(key),
            client.attr(key),
            "{key} is the same on both ends:\n{client:?}\n{server:?}"
        );
    }
    assert_eq!(
        server.service(),
        Some("redis-server"),
        "service: {server:?}"
    );
    server
}

fn check_common(span: &Span, port: u16) {
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
    assert!(span.duration_nanos().is_some(), "start <= end: {span:?}");
}

fn hit(span: &Span) -> Option<bool> {
    span.attr("ztrace.cache.hit").and_then(|v| v.as_bool())
}

#[test]
#[ignore = "needs root and eBPF; run by cargo xtask test"]
fn redis_cli_commands_give_linked_client_and_server_spans() {
    let server = RedisServer::start(None);
    let mut ztrace = Ztrace::start(&["--print=json"]);

    for args in [
        &["SET", "user:42", "alice-secret-value"][..],
        &["GET", "user:42"],
        &["GET", "user:missing"],
        &["HSET", "profile:42", "email", "a@example.com"],
        &["GET", "profile:42"],
        &["-n", "3", "MGET", "user:42", "nope"],
    ] {
        let run = server.cli(args);
        assert!(run.success, "redis-cli {args:?}: {}", run.stderr);
    }

    let port = server.port;
    let spans = ztrace.wait_for_n_spans(14, to_server(port), SPAN_TIMEOUT);
    let (servers, clients) = split(&spans);
    let texts: Vec<&str> = clients
        .iter()
        .filter_map(|s| s.attr_str("db.query.text"))
        .collect();
    assert_eq!(
        texts,
        [
            "SET user:42 ?",
            "GET user:42",
            "GET user:missing",
            "HSET profile:42 ? ?",
            "GET profile:42",
            "SELECT ?",
            "MGET user:42 nope"
        ],
        "one client span per command:\n{}",
        list(&spans)
    );
    assert_eq!(
        servers.len(),
        clients.len(),
        "one server span per command:\n{}",
        list(&spans)
    );
    for client in &clients {
        assert_eq!(client.kind(), Some("client"));
        assert_eq!(client.service(), Some("redis-cli"), "service: {client:?}");
        assert_eq!(client.attr_str("ztrace.link"), Some("none"));
        check_common(client, port);
        let server_span = child_of(client, &servers);
        check_common(server_span, port);
        assert_eq!(
            server_span.pid(),
            Some(server.pid()),
            "redis-server's own pid: {server_span:?}"
        );
        assert_eq!(server_span.kind(), Some("server"));
    }
    let (set, get, miss, wrongtype, mget) = (
        &clients[0],
        &clients[1],
        &clients[2],
        &clients[4],
        &clients[6],
    );
    assert_eq!(set.name(), Some("SET"));
    assert_eq!(set.attr_str("db.operation.name"), Some("SET"));
    assert_eq!(set.attr_str("db.namespace"), Some("0"));
    assert_eq!(set.status(), Some("unset"));
    assert_eq!(hit(set), None, "a write is neither hit nor miss");
    assert_eq!((hit(get), hit(miss)), (Some(true), Some(false)));
    assert_eq!(wrongtype.status(), Some("error"), "{wrongtype:?}");
    assert_eq!(
        wrongtype.attr_str("db.response.status_code"),
        Some("WRONGTYPE")
    );
    assert_eq!(wrongtype.attr_str("error.type"), Some("WRONGTYPE"));
    assert_eq!(
        mget.attr_str("db.namespace"),
        Some("3"),
        "redis-cli -n 3 selects database 3 first"
    );
    assert_eq!(
        (
            mget.attr_i64("ztrace.cache.hits"),
            mget.attr_i64("ztrace.cache.misses")
        ),
        (Some(0), Some(2))
    );
    for span in &spans {
        // The values are redis-cli's own arguments, in its `process.command_line`: the
        // span's attributes must not have them.
        let attributes = span.0["attributes"].to_string();
        assert!(
            !attributes.contains("alice-secret-value") && !attributes.contains("a@example.com"),
            "a value was exported: {attributes}"
        );
    }
    ztrace.stop();
}

#[test]
#[ignore = "needs root and eBPF; run by cargo xtask test"]
fn redis_benchmark_pipelines_pair_every_command() {
    const REQUESTS: usize = 320;
    let server = RedisServer::start(None);
    let mut ztrace = Ztrace::start(&["--print=json"]);

    let n = REQUESTS.to_string();
    let run = server.benchmark(&["-P", "16", "-c", "2", "-n", &n, "-t", "set,get", "-q"]);
    assert!(
        run.success,
        "redis-benchmark: {}\n{}",
        run.stdout, run.stderr
    );

    let port = server.port;
    let is_benchmark = move |s: &Span| {
        to_server(port)(s)
            && matches!(
                s.attr_str("db.query.text"),
                Some("SET key:__rand_int__ ?" | "GET key:__rand_int__")
            )
    };
    ztrace.wait_for_n_spans(4 * REQUESTS, is_benchmark, SPAN_TIMEOUT);
    let spans: Vec<Span> = ztrace.spans().into_iter().filter(is_benchmark).collect();
    let (servers, clients) = split(&spans);
    for (side, spans) in [("client", &clients), ("server", &servers)] {
        for text in ["SET key:__rand_int__ ?", "GET key:__rand_int__"] {
            let count = spans
                .iter()
                .filter(|s| s.attr_str("db.query.text") == Some(text))
                .count();
            assert_eq!(count, REQUESTS, "{side} spans of `{text}`");
        }
    }
    // Pipelined 16 to a write: the k-th reply of a batch is the k-th command's, on both ends.
    let mut parents = std::collections::HashSet::new();
    for server_span in &servers {
        let parent = server_span
            .parent_span_id()
            .flatten()
            .unwrap_or_else(|| panic!("no parent: {server_span:?}"));
        let client = clients
            .iter()
            .find(|c| c.span_id() == Some(parent))
            .unwrap_or_else(|| panic!("the parent of {server_span:?} is no client span"));
        assert_eq!(
            client.attr_str("db.query.text"),
            server_span.attr_str("db.query.text")
        );
        assert!(
            parents.insert(parent),
            "two server spans share the parent {parent}"
        );
        assert_eq!(client.service(), Some("redis-benchmark"));
    }
    let gets = clients.iter().filter(|s| s.name() == Some("GET"));
    assert!(
        gets.clone().all(|s| hit(s) == Some(true)),
        "every GET follows the SETs of its key"
    );
    assert_eq!(gets.count(), REQUESTS);
    ztrace.stop();
}

#[test]
#[ignore = "needs root and eBPF; run by cargo xtask test"]
fn redis_py_resp2_and_resp3_with_auth_pipelines_transactions_and_pubsub() {
    const PASSWORD: &str = "hunter2-never-exported";
    let server = RedisServer::start(Some(PASSWORD));
    let mut ztrace = Ztrace::start(&["--print=json"]);

    for protocol in [2u8, 3] {
        let run = server.python_client(protocol);
        assert!(
            run.success && run.stdout.contains("done"),
            "redis_client.py {protocol}: {}\n{}",
            run.stdout,
            run.stderr
        );
    }
    let port = server.port;
    let last_get = move |s: &Span| {
        to_server(port)(s)
            && s.is_client()
            && s.attr_str("db.query.text") == Some("GET session:abc")
    };
    // Each run ends with its second `GET session:abc` (after the pipeline's one): six in all.
    ztrace.wait_for_n_spans(6, last_get, SPAN_TIMEOUT);
    let spans: Vec<Span> = ztrace.spans().into_iter().filter(to_server(port)).collect();
    let (servers, clients) = split(&spans);
    for span in &spans {
        let json = span.0.to_string();
        for secret in [PASSWORD, "payload-never-exported", "order-payload"] {
            assert!(!json.contains(secret), "{secret} was exported: {json}");
        }
    }
    let texts: Vec<&str> = clients
        .iter()
        .filter_map(|s| s.attr_str("db.query.text"))
        .collect();
    for expected in [
        "AUTH",
        "HELLO",
        "SELECT ?",
        "SET session:abc ?",
        "GET session:missing",
        "MGET session:abc m1 m2",
        "MULTI",
        "LPUSH tx:key ?",
        "EXEC",
        "SUBSCRIBE orders",
        "UNSUBSCRIBE orders",
    ] {
        assert!(
            texts.contains(&expected),
            "no client span `{expected}` in:\n{}",
            list(&clients)
        );
    }
    let with = |text: &'static str| {
        clients
            .iter()
            .filter(move |s| s.attr_str("db.query.text") == Some(text))
    };
    for span in with("GET session:missing") {
        assert_eq!(hit(span), Some(false));
        assert_eq!(span.attr_str("db.namespace"), Some("4"));
    }
    for span in with("MGET session:abc m1 m2") {
        assert_eq!(
            (
                span.attr_i64("ztrace.cache.hits"),
                span.attr_i64("ztrace.cache.misses")
            ),
            (Some(1), Some(2))
        );
    }
    for span in with("LPUSH tx:key ?") {
        assert_eq!(
            span.attr("ztrace.redis.queued").and_then(|v| v.as_bool()),
            Some(true),
            "{span:?}"
        );
    }
    for span in with("SUBSCRIBE orders") {
        assert_eq!(span.status(), Some("unset"), "{span:?}");
    }
    assert_eq!(with("UNSUBSCRIBE orders").count(), 2, "RESP2 and RESP3");
    // Every command after the pushed messages is still paired: the final GETs hit.
    assert!(with("GET session:abc").all(|s| hit(s) == Some(true)));
    for client in &clients {
        child_of(client, &servers);
    }
    // Pub/sub: each PUBLISH is a PRODUCER span (with redis-server's SERVER span as its child),
    // each message pushed to the subscription a CONSUMER span, the child of the publish.
    let producers: Vec<&Span> = spans
        .iter()
        .filter(|s| s.kind() == Some("producer"))
        .collect();
    let consumers: Vec<&Span> = spans
        .iter()
        .filter(|s| s.kind() == Some("consumer"))
        .collect();
    assert_eq!(
        (producers.len(), consumers.len()),
        (4, 4),
        "two messages per run:\n{}",
        list(&spans)
    );
    for producer in &producers {
        assert_eq!(producer.name(), Some("publish orders"));
        assert_eq!(producer.attr_str("db.query.text"), Some("PUBLISH orders ?"));
        assert_eq!(
            producer.attr_str("messaging.destination.name"),
            Some("orders")
        );
        assert_eq!(producer.attr_i64("messaging.message.body.size"), Some(15));
        child_of(producer, &servers);
    }
    for consumer in &consumers {
        assert_eq!(consumer.name(), Some("receive orders"));
        assert_eq!(consumer.attr_str("messaging.system"), Some("redis"));
        let parent = producers
            .iter()
            .find(|p| consumer.parent_span_id() == Some(p.span_id()));
        assert!(
            parent.is_some(),
            "a delivery is the child of its publish: {consumer:?}\n{}",
            list(&spans)
        );
        assert_eq!(consumer.attr_str("ztrace.link"), Some("message"));
    }
    assert_eq!(
        servers.len(),
        clients.len() + producers.len(),
        "one server span per command:\n{}",
        list(&spans)
    );
    ztrace.stop();
}

/// Streams: each `XADD` of a redis-py producer is a PRODUCER span `publish orders` with the id
/// the server returned as `messaging.message.id`; each entry an `XREADGROUP` of the consumer
/// returns is a CONSUMER span `receive orders`, the child of the XADD's span
/// (`ztrace.link` = `message`: the same stream and entry id); the HTTP call the consumer makes
/// while handling the entry is the child of the CONSUMER span (`thread`). RESP2 and RESP3.
#[test]
#[ignore = "needs root and eBPF; run by cargo xtask test"]
fn redis_py_stream_entries_link_xreadgroup_to_xadd() {
    let server = RedisServer::start(None);
    let stock = ztrace_e2e::servers::Server::python_http("127.0.0.1");
    let mut ztrace = Ztrace::start(&["--print=json"]);
    let port = server.port;
    let url = format!("http://127.0.0.1:{}/hello", stock.port);
    let mut http_seen = 0;
    for protocol in [2u8, 3] {
        let mut consumer = server.stream_consumer(&url, protocol);
        let producer = server.stream_producer(protocol);
        assert!(
            producer.success && producer.stdout.contains("done"),
            "producer: {}\n{}",
            producer.stdout,
            producer.stderr
        );
        consumer.wait_for_stdout("done", std::time::Duration::from_secs(60));
        let ids: Vec<String> = producer
            .stdout
            .lines()
            .filter_map(|l| l.strip_prefix("added ").map(str::to_owned))
            .collect();
        assert_eq!(ids.len(), 2, "{}", producer.stdout);
        let (con_pid, pro_pid) = (consumer.pid(), producer.pid);
        let messaging = move |s: &Span| {
            to_server(port)(s)
                && s.attr_str("messaging.system") == Some("redis")
                && (s.pid() == Some(con_pid) || s.pid() == Some(pro_pid))
        };
        let spans = ztrace.wait_for_n_spans(4, messaging, SPAN_TIMEOUT);
        assert_eq!(spans.len(), 4, "RESP{protocol}:\n{}", list(&spans));
        http_seen += 2;
        let stock_port = stock.port;
        let http = ztrace.wait_for_n_spans(
            2 * http_seen,
            move |s: &Span| s.server_port() == Some(stock_port) && s.url_path() == Some("/hello"),
            SPAN_TIMEOUT,
        );
        for id in &ids {
            let with_id = |kind: &str, pid: u32| {
                spans
                    .iter()
                    .find(|s| {
                        s.kind() == Some(kind)
                            && s.pid() == Some(pid)
                            && s.attr_str("messaging.message.id") == Some(id.as_str())
                    })
                    .unwrap_or_else(|| {
                        panic!("RESP{protocol}: no {kind} span of {id}:\n{}", list(&spans))
                    })
            };
            let added = with_id("producer", pro_pid);
            let read = with_id("consumer", con_pid);
            assert_eq!(added.name(), Some("publish orders"));
            assert_eq!(added.attr_str("db.operation.name"), Some("XADD"));
            assert_eq!(read.name(), Some("receive orders"));
            assert_eq!(read.attr_str("messaging.destination.name"), Some("orders"));
            assert_eq!(
                read.parent_span_id(),
                Some(added.span_id()),
                "RESP{protocol}:\n{added:?}\n{read:?}"
            );
            assert_eq!(read.trace_id(), added.trace_id());
            assert_eq!(read.attr_str("ztrace.link"), Some("message"));
            let call = http
                .iter()
                .find(|s| s.is_client() && s.parent_span_id() == Some(read.span_id()))
                .unwrap_or_else(|| {
                    panic!(
                        "RESP{protocol}: no HTTP call is the child of {read:?}:\n{}",
                        list(&http)
                    )
                });
            assert_eq!(call.attr_str("ztrace.link"), Some("thread"));
            assert_eq!(call.trace_id(), added.trace_id());
        }
        for span in &spans {
            assert!(
                !span.0.to_string().contains("payload-never-exported"),
                "{span:?}"
            );
        }
    }
    ztrace.stop();
}
