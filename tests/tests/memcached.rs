//! memcached end to end: a real memcached 1.6 on a free loopback port and the Python client
//! pymemcache, traced by the real agent with `--print=json`. Every command is a CLIENT span of
//! the client and a SERVER span of memcached, the latter the child of the former; keys and
//! per-key hit/miss are on the spans, values never are.

use ztrace_e2e::checks;
use ztrace_e2e::memcached::MemcachedServer;
use ztrace_e2e::span::{list, split_by_kind as split};
use ztrace_e2e::ztrace::SPAN_TIMEOUT;
use ztrace_e2e::{Span, Ztrace};

fn to_server(port: u16) -> impl Fn(&Span) -> bool + Clone {
    move |span| {
        span.attr_str("db.system.name") == Some("memcached") && span.server_port() == Some(port)
    }
}

#[test]
#[ignore = "needs root and eBPF; run by cargo xtask test"]
fn pymemcache_commands_give_linked_spans_with_keys_and_hits() {
    let server = MemcachedServer::start();
    let mut ztrace = Ztrace::start(&["--print=json"]);

    let run = server.python_client();
    assert!(
        run.success && run.stdout.contains("done"),
        "memcached_client.py: {}\n{}",
        run.stdout,
        run.stderr
    );

    let port = server.port;
    let spans = ztrace.wait_for_n_spans(16, to_server(port), SPAN_TIMEOUT);
    let (servers, clients) = split(&spans);
    let texts: Vec<&str> = clients
        .iter()
        .filter_map(|s| s.attr_str("db.query.text"))
        .collect();
    assert_eq!(
        texts,
        [
            "set session:7 ? ? ? noreply",
            "get session:7",
            "get session:none",
            "get session:7 miss:1 miss:2",
            "add session:7 ? ? ?",
            "delete session:7",
            "set visits ? ? ?",
            "incr visits ?",
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
        // A short client may exit before ztrace reads its command line (then it is named by
        // its `comm`): its pid says who sent the command.
        assert_eq!(client.pid(), Some(run.pid), "the client's pid: {client:?}");
        assert_eq!(client.attr_str("server.address"), Some("127.0.0.1"));
        assert_eq!(client.attr_i64("server.port"), Some(i64::from(port)));
        let server_span = servers
            .iter()
            .find(|s| s.parent_span_id() == Some(client.span_id()))
            .unwrap_or_else(|| {
                panic!(
                    "no server span is the child of {client:?}\nservers:\n{}",
                    list(&servers)
                )
            });
        if client.attr("ztrace.memcached.noreply").is_some() {
            // No reply: the client's span ends when it sent the command, before the server
            // read it.
            assert_eq!(server_span.trace_id(), client.trace_id());
        } else {
            checks::linked(client, server_span);
        }
        assert_eq!(server_span.attr_str("ztrace.link"), Some("connection"));
        assert_eq!(
            server_span.pid(),
            Some(server.pid()),
            "memcached's pid: {server_span:?}"
        );
        assert_eq!(server_span.service(), Some("memcached"));
        for key in [
            "db.query.text",
            "db.response.status_code",
            "ztrace.cache.hit",
            "ztrace.cache.missed_keys",
        ] {
            assert_eq!(
                server_span.attr(key),
                client.attr(key),
                "{key} on both ends"
            );
        }
    }
    let hit = |s: &Span| s.attr("ztrace.cache.hit").and_then(|v| v.as_bool());
    assert_eq!(
        clients[0]
            .attr("ztrace.memcached.noreply")
            .and_then(|v| v.as_bool()),
        Some(true)
    );
    assert_eq!(
        (hit(&clients[1]), hit(&clients[2])),
        (Some(true), Some(false))
    );
    let multi = &clients[3];
    assert_eq!(
        (
            multi.attr_i64("ztrace.cache.hits"),
            multi.attr_i64("ztrace.cache.misses")
        ),
        (Some(1), Some(2))
    );
    assert_eq!(
        multi.attr_str("ztrace.cache.missed_keys"),
        Some("miss:1 miss:2")
    );
    assert_eq!(
        clients[4].attr_str("db.response.status_code"),
        Some("NOT_STORED")
    );
    assert_eq!(
        clients[5].attr_str("db.response.status_code"),
        Some("DELETED")
    );
    assert!(clients.iter().all(|s| s.status() == Some("unset")));
    for span in &spans {
        assert!(
            !span.0.to_string().contains("value-never-exported"),
            "a value was exported: {span:?}"
        );
    }
    ztrace.stop();
}
