//! Trace assembly end to end (DESIGN.md, "Trace assembly"): on one host the agent sees both ends
//! of a local connection, and the client span becomes the parent of the server span; a
//! `traceparent` header arriving in a request is honoured.

use ztrace_e2e::checks;
use ztrace_e2e::clients;
use ztrace_e2e::servers::Server;
use ztrace_e2e::ztrace::SPAN_TIMEOUT;
use ztrace_e2e::{Span, Ztrace};

fn on_port(port: u16) -> impl Fn(&Span) -> bool {
    move |span| span.server_port() == Some(port)
}

fn sorted(mut spans: Vec<Span>, kind: &str) -> Vec<Span> {
    spans.retain(|s| s.kind() == Some(kind));
    spans.sort_by_key(Span::start_unix_nano);
    spans
}

#[test]
#[ignore = "needs root and eBPF; run by cargo xtask test"]
fn the_client_span_is_the_parent_of_the_server_span_on_a_local_connection() {
    let server = Server::python_http("127.0.0.1");
    let mut ztrace = Ztrace::start(&["--print=json"]);

    let run = clients::curl(&[server.url("/hello")]);
    assert_eq!(run.transfers[0].0, 200);

    let spans = ztrace.wait_for_n_spans(2, on_port(server.port), SPAN_TIMEOUT);
    let (servers, clients) = (sorted(spans.clone(), "server"), sorted(spans, "client"));
    assert_eq!(
        (servers.len(), clients.len()),
        (1, 1),
        "{servers:?}\n{clients:?}"
    );
    checks::linked(&clients[0], &servers[0]);
    assert_eq!(
        servers[0].attr_str("ztrace.link"),
        Some("connection"),
        "ztrace.link: {:?}",
        servers[0]
    );
    assert_eq!(
        clients[0].parent_span_id(),
        Some(None),
        "curl's span is a root: {:?}",
        clients[0]
    );
    ztrace.stop();
}

#[test]
#[ignore = "needs root and eBPF; run by cargo xtask test"]
fn each_exchange_on_a_keep_alive_connection_has_its_own_client_parent() {
    let server = Server::nginx();
    let mut ztrace = Ztrace::start(&["--print=json"]);

    let run = clients::curl(&["/hello", "/items/42", "/index.html"].map(|p| server.url(p)));
    assert_eq!(run.transfers, [(200, 1), (200, 0), (200, 0)]);

    let spans = ztrace.wait_for_n_spans(6, on_port(server.port), SPAN_TIMEOUT);
    let (servers, clients) = (sorted(spans.clone(), "server"), sorted(spans, "client"));
    assert_eq!(
        (servers.len(), clients.len()),
        (3, 3),
        "{servers:?}\n{clients:?}"
    );
    for (client, server) in clients.iter().zip(&servers) {
        assert_eq!(
            client.url_path(),
            server.url_path(),
            "pairs in order:\n{client:?}\n{server:?}"
        );
        checks::linked(client, server);
    }
    let traces: std::collections::HashSet<_> = clients.iter().map(Span::trace_id).collect();
    assert_eq!(traces.len(), 3, "three requests, three traces: {clients:?}");
    ztrace.stop();
}

#[test]
#[ignore = "needs root and eBPF; run by cargo xtask test"]
fn an_incoming_traceparent_header_is_honoured() {
    let server = Server::python_http("127.0.0.1");
    // Only the server is traced, so that the header is the only way to a parent.
    let pid = server.pid().to_string();
    let mut ztrace = Ztrace::start(&["--print=json", "--pid", &pid]);

    let (trace_id, parent_id) = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
    let header = format!("traceparent: 00-{trace_id}-{parent_id}-01");
    let run = clients::curl_with(&[server.url("/hello")], &["-H", &header]);
    assert_eq!(run.transfers[0].0, 200);

    let spans = ztrace.wait_for_spans(on_port(server.port), SPAN_TIMEOUT);
    assert_eq!(spans.len(), 1, "{spans:?}");
    let span = &spans[0];
    assert_eq!(span.kind(), Some("server"), "{span:?}");
    assert_eq!(
        span.trace_id(),
        Some(trace_id),
        "trace_id from the header: {span:?}"
    );
    assert_eq!(
        span.parent_span_id(),
        Some(Some(parent_id)),
        "parent from the header: {span:?}"
    );
    assert_eq!(
        span.attr_str("ztrace.link"),
        Some("header"),
        "ztrace.link: {span:?}"
    );
    ztrace.stop();
}
