//! RabbitMQ end to end: a real rabbitmq-server (AMQP 0-9-1) on free loopback ports, a consumer
//! and a publisher in Python (Debian's pika), traced by the real agent with `--print=json`.
//! Every message published is a PRODUCER span of the publisher; every message pushed to the
//! consumer (`basic.deliver`) and pulled by it (`basic.get`) a CONSUMER span of the consumer, the
//! child of the PRODUCER span that sent the same message (`ztrace.link` = `message`), or of the
//! `traceparent` its headers carry (`header`). The HTTP call the consumer makes while handling a
//! message is the child of its CONSUMER span (`thread`). Bodies and credentials are never
//! exported; body sizes are. The consumer's connection was opened before ztrace started
//! (recognized mid-stream), the publisher's after (recognized by its protocol header).

use ztrace_e2e::rabbitmq::RabbitServer;
use ztrace_e2e::servers::Server;
use ztrace_e2e::span::list;
use ztrace_e2e::ztrace::SPAN_TIMEOUT;
use ztrace_e2e::{Span, Ztrace};

fn rabbitmq_on(port: u16) -> impl Fn(&Span) -> bool + Clone {
    move |span| {
        span.attr_str("messaging.system") == Some("rabbitmq")
            && span.attr_i64("server.port") == Some(i64::from(port))
    }
}

fn named<'a>(spans: &'a [Span], kind: &str, name: &str, pid: u32) -> Vec<&'a Span> {
    spans
        .iter()
        .filter(|s| s.kind() == Some(kind) && s.name() == Some(name) && s.pid() == Some(pid))
        .collect()
}

#[test]
#[ignore = "needs root and eBPF; run by cargo xtask test"]
fn pika_publish_deliver_and_get_are_linked_producer_and_consumer_spans() {
    publish_deliver_and_get(Publisher::Pika);
}

/// The same with the messages published by Node's amqplib (a confirm channel: the broker's
/// `basic.ack`s are read between the publishes).
#[test]
#[ignore = "needs root and eBPF; run by cargo xtask test"]
fn amqplib_publish_to_a_pika_consumer_is_linked_producer_and_consumer_spans() {
    publish_deliver_and_get(Publisher::Amqplib);
}

enum Publisher {
    Pika,
    Amqplib,
}

fn publish_deliver_and_get(with: Publisher) {
    let server = RabbitServer::start();
    let stock = Server::python_http("127.0.0.1");
    // The consumer connects before ztrace starts: its connection is recognized mid-stream, by
    // its first whole method frame (`basic.consume` or `basic.deliver`); the publisher's by the
    // protocol header.
    let mut consumer = server.consumer(&format!("http://127.0.0.1:{}/hello", stock.port));
    let mut ztrace = Ztrace::start(&["--print=json"]);
    let publisher = match with {
        Publisher::Pika => server.publisher(),
        Publisher::Amqplib => server.node_publisher(),
    };
    assert!(
        publisher.success && publisher.stdout.contains("done"),
        "publisher: {}\n{}",
        publisher.stdout,
        publisher.stderr
    );
    consumer.wait_for_stdout("done", std::time::Duration::from_secs(60));
    let (con_pid, pub_pid) = (consumer.pid(), publisher.pid);

    let port = server.port;
    // 3 published, 2 pushed and 1 pulled.
    let spans = ztrace.wait_for_n_spans(6, rabbitmq_on(port), SPAN_TIMEOUT);
    let broker = server.pid();
    assert!(
        spans.iter().all(|s| s.pid() != Some(broker)),
        "the broker makes no spans:\n{}",
        list(&spans)
    );
    assert_eq!(spans.len(), 6, "{}", list(&spans));

    let published = named(&spans, "producer", "publish orders", pub_pid);
    let delivered = named(&spans, "consumer", "deliver orders", con_pid);
    assert_eq!(
        (published.len(), delivered.len()),
        (2, 2),
        "two orders through the default exchange:\n{}",
        list(&spans)
    );
    for span in published.iter().chain(&delivered) {
        assert_eq!(span.attr_str("messaging.destination.name"), Some("orders"));
        assert_eq!(
            span.attr_str("messaging.rabbitmq.destination.routing_key"),
            Some("orders")
        );
        assert_eq!(
            span.attr_i64("messaging.message.body.size"),
            Some(36),
            "{span:?}"
        );
    }
    assert_eq!(
        published[0].attr_str("messaging.operation.type"),
        Some("send")
    );
    assert_eq!(
        published[0].attr_str("messaging.operation.name"),
        Some("publish")
    );
    assert_eq!(
        delivered[0].attr_str("messaging.operation.type"),
        Some("process")
    );
    assert_eq!(
        delivered[0].attr_str("messaging.operation.name"),
        Some("deliver")
    );
    let tags: Vec<_> = delivered
        .iter()
        .map(|s| s.attr_i64("messaging.rabbitmq.message.delivery_tag"))
        .collect();
    assert_eq!(tags, [Some(1), Some(2)]);

    // The first order: no headers; the delivery is the publish's child, matched on the message.
    let (first_pub, first_del) = (published[0], delivered[0]);
    assert_eq!(
        first_del.parent_span_id(),
        Some(first_pub.span_id()),
        "{first_pub:?}\n{first_del:?}"
    );
    assert_eq!(first_del.trace_id(), first_pub.trace_id());
    assert_eq!(first_del.attr_str("ztrace.link"), Some("message"));
    // The second carries a traceparent among its headers: both ends join that trace.
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

    // The job: published to the exchange jobs.x, pulled from its queue by basic.get.
    let job_pub = named(&spans, "producer", "publish jobs.x", pub_pid);
    let job_get = named(&spans, "consumer", "get jobs.x", con_pid);
    assert_eq!((job_pub.len(), job_get.len()), (1, 1), "{}", list(&spans));
    let (job_pub, job_get) = (job_pub[0], job_get[0]);
    for span in [job_pub, job_get] {
        assert_eq!(span.attr_str("messaging.destination.name"), Some("jobs.x"));
        assert_eq!(
            span.attr_str("messaging.rabbitmq.destination.routing_key"),
            Some("nightly")
        );
        assert_eq!(span.attr_i64("messaging.message.body.size"), Some(26));
    }
    assert_eq!(
        job_get.attr_str("messaging.operation.type"),
        Some("receive")
    );
    assert_eq!(
        job_get.attr_i64("messaging.rabbitmq.message.delivery_tag"),
        Some(3)
    );
    assert_eq!(job_get.parent_span_id(), Some(job_pub.span_id()));
    assert_eq!(job_get.trace_id(), job_pub.trace_id());
    assert_eq!(job_get.attr_str("ztrace.link"), Some("message"));

    // Handling each message, the consumer called the stock service: that call is the child of
    // the delivery, and the service's SERVER span the child of the call: one trace from the
    // publish to the service.
    let stock_port = stock.port;
    let http = ztrace.wait_for_n_spans(
        6,
        move |s: &Span| s.server_port() == Some(stock_port) && s.url_path() == Some("/hello"),
        SPAN_TIMEOUT,
    );
    for (delivery, publish) in [
        (first_del, first_pub),
        (delivered[1], published[1]),
        (job_get, job_pub),
    ] {
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
        assert_eq!(call.pid(), Some(con_pid));
        assert_eq!(
            call.trace_id(),
            publish.trace_id(),
            "one trace from the publish to the service"
        );
        assert!(
            http.iter()
                .any(|s| s.is_server() && s.parent_span_id() == Some(call.span_id())),
            "the stock service's span is the call's child:\n{}",
            list(&http)
        );
    }

    for span in &spans {
        let json = span.0.to_string();
        assert!(
            !json.contains("payload-never-exported") && !json.contains("guest"),
            "a body or a credential was exported: {json}"
        );
        assert!(!json.contains("ztrace.internal"), "{json}");
    }
    ztrace.stop();
}
