//! NATS end to end: a real nats-server on a free loopback port, a subscriber/responder in Python
//! (nats-py) and a publisher/requester in Python, then in Node (the npm `nats` client), traced
//! by the real agent with `--print=json`.
//! Every message published is a PRODUCER span of the publisher and every delivery a CONSUMER
//! span of the receiver, the CONSUMER span the child of the PRODUCER span that sent the same
//! message (`ztrace.link` = `message`), or of the `traceparent` the message's headers carry
//! (`header`); request/reply through an `_INBOX` subject gives two such pairs, the reply a
//! child of the request it answers. The HTTP call the subscriber makes while handling a message
//! is the child of its CONSUMER span (`thread`). Payloads are never exported; their sizes are.

use std::time::Duration;

use ztrace_e2e::nats::NatsServer;
use ztrace_e2e::postgres::ClientRun;
use ztrace_e2e::servers::Server;
use ztrace_e2e::span::list;
use ztrace_e2e::ztrace::SPAN_TIMEOUT;
use ztrace_e2e::{Span, Ztrace};

fn nats_on(port: u16) -> impl Fn(&Span) -> bool + Clone {
    move |span| {
        span.attr_str("messaging.system") == Some("nats")
            && span.attr_i64("server.port") == Some(i64::from(port))
    }
}

fn one<'a>(spans: &'a [Span], kind: &str, name: &str, pid: u32) -> &'a Span {
    let found: Vec<&Span> = spans
        .iter()
        .filter(|s| s.kind() == Some(kind) && s.name() == Some(name) && s.pid() == Some(pid))
        .collect();
    assert!(
        !found.is_empty(),
        "no {kind} span `{name}` of pid {pid}:\n{}",
        list(spans)
    );
    found[0]
}

#[test]
#[ignore = "needs root and eBPF; run by cargo xtask test"]
fn nats_py_publish_deliver_and_request_reply_are_linked_producer_and_consumer_spans() {
    publish_deliver_and_request_reply(NatsServer::publisher);
}

/// The same with Node's `nats` client publishing and requesting (its own header block and
/// `_INBOX` subjects) to the Python subscriber.
#[test]
#[ignore = "needs root and eBPF; run by cargo xtask test"]
fn node_nats_publish_and_request_to_a_nats_py_subscriber_are_linked() {
    publish_deliver_and_request_reply(NatsServer::node_publisher);
}

/// Runs `publisher` against the Python subscriber/responder and checks every span and link.
fn publish_deliver_and_request_reply(publisher: fn(&NatsServer) -> ClientRun) {
    let server = NatsServer::start();
    let stock = Server::python_http("127.0.0.1");
    let mut ztrace = Ztrace::start(&["--print=json"]);

    let mut subscriber = server.subscriber(&format!("http://127.0.0.1:{}/hello", stock.port));
    let publisher = publisher(&server);
    assert!(
        publisher.success && publisher.stdout.contains("done"),
        "publisher: {}\n{}",
        publisher.stdout,
        publisher.stderr
    );
    subscriber.wait_for_stdout("done", Duration::from_secs(30));
    let (sub_pid, pub_pid) = (subscriber.pid(), publisher.pid);

    let port = server.port;
    // 3 published by the publisher + 1 reply published by the subscriber; as many deliveries.
    let spans = ztrace.wait_for_n_spans(8, nats_on(port), SPAN_TIMEOUT);
    assert!(
        spans.iter().all(|s| s.pid() != Some(server.pid())),
        "the broker makes no spans:\n{}",
        list(&spans)
    );

    let published: Vec<&Span> = spans
        .iter()
        .filter(|s| s.kind() == Some("producer") && s.name() == Some("publish orders.created"))
        .collect();
    let delivered: Vec<&Span> = spans
        .iter()
        .filter(|s| s.kind() == Some("consumer") && s.name() == Some("receive orders.created"))
        .collect();
    assert_eq!(
        (published.len(), delivered.len()),
        (2, 2),
        "two orders:\n{}",
        list(&spans)
    );
    for span in published.iter().chain(&delivered) {
        assert_eq!(
            span.attr_str("messaging.destination.name"),
            Some("orders.created")
        );
        assert_eq!(
            span.attr_i64("messaging.message.body.size"),
            Some(36),
            "{span:?}"
        );
    }
    assert!(
        published.iter().all(|s| s.pid() == Some(pub_pid))
            && delivered.iter().all(|s| s.pid() == Some(sub_pid))
    );
    assert_eq!(
        published[0].attr_str("messaging.operation.type"),
        Some("send")
    );
    assert_eq!(
        delivered[0].attr_str("messaging.operation.type"),
        Some("receive")
    );
    assert_eq!(
        delivered[0].attr_str("messaging.destination.subscription.name"),
        Some("1")
    );

    // The first order: no headers; the delivery is the publish's child, matched on the message.
    let (first_pub, first_del) = (published[0], delivered[0]);
    assert_eq!(
        first_del.parent_span_id(),
        Some(first_pub.span_id()),
        "{first_pub:?}\n{first_del:?}"
    );
    assert_eq!(first_del.trace_id(), first_pub.trace_id());
    assert_eq!(first_del.attr_str("ztrace.link"), Some("message"));
    // The second carries a traceparent: both ends join that trace.
    for span in [published[1], delivered[1]] {
        assert_eq!(
            span.trace_id(),
            Some("0af7651916cd43dd8448eb211c80319c"),
            "{span:?}"
        );
        assert_eq!(
            span.parent_span_id(),
            Some(Some("b7ad6b7169203331")),
            "{span:?}"
        );
        assert_eq!(span.attr_str("ztrace.link"), Some("header"));
    }

    // Request/reply: the request is delivered as the child of its publish, and the reply to the
    // `_INBOX` subject as the child of the responder's publish.
    let request = one(&spans, "producer", "publish svc.ping", pub_pid);
    let request_in = one(&spans, "consumer", "receive svc.ping", sub_pid);
    assert_eq!(request_in.parent_span_id(), Some(request.span_id()));
    let inbox = request
        .attr_str("messaging.nats.reply_to")
        .expect("a reply subject");
    assert!(inbox.starts_with("_INBOX."), "{request:?}");
    assert_eq!(request_in.attr_str("messaging.nats.reply_to"), Some(inbox));
    let reply = one(&spans, "producer", "publish _INBOX", sub_pid);
    let reply_in = one(&spans, "consumer", "receive _INBOX", pub_pid);
    assert_eq!(reply.attr_str("messaging.destination.name"), Some(inbox));
    assert_eq!(
        reply
            .attr("messaging.destination.temporary")
            .and_then(|v| v.as_bool()),
        Some(true)
    );
    assert_eq!(reply_in.parent_span_id(), Some(reply.span_id()));
    assert_eq!(reply_in.attr_str("ztrace.link"), Some("message"));
    assert_eq!(reply_in.attr_i64("messaging.message.body.size"), Some(25));

    // The responder's reply is part of handling the request it answers.
    assert_eq!(
        reply.parent_span_id(),
        Some(request_in.span_id()),
        "{reply:?}"
    );
    assert_eq!(reply.attr_str("ztrace.link"), Some("thread"));

    // Handling each order, the subscriber called the stock service: that call is the child of
    // the delivery, and the service's SERVER span the child of the call: one trace from the
    // publish to the service.
    let stock_port = stock.port;
    let http = ztrace.wait_for_n_spans(
        4,
        move |s: &Span| s.server_port() == Some(stock_port) && s.url_path() == Some("/hello"),
        SPAN_TIMEOUT,
    );
    for (delivery, publish) in [(first_del, first_pub), (delivered[1], published[1])] {
        let call = http
            .iter()
            .find(|s| s.is_client() && s.parent_span_id() == Some(delivery.span_id()))
            .unwrap_or_else(|| {
                panic!(
                    "no HTTP call is the child of {delivery:?}:\n{}",
                    list(&http)
                )
            });
        assert_eq!(call.attr_str("ztrace.link"), Some("thread"));
        assert_eq!(call.pid(), Some(sub_pid));
        assert_eq!(
            call.trace_id(),
            publish.trace_id(),
            "one trace from the publish to the service"
        );
        let served = http
            .iter()
            .find(|s| s.is_server() && s.parent_span_id() == Some(call.span_id()));
        assert!(
            served.is_some(),
            "the stock service's span is the call's child:\n{}",
            list(&http)
        );
    }

    for span in &spans {
        let json = span.0.to_string();
        assert!(
            !json.contains("payload-never-exported") && !json.contains("ping-payload"),
            "a payload was exported: {json}"
        );
        assert!(!json.contains("ztrace.internal"), "{json}");
    }
    ztrace.stop();
}
